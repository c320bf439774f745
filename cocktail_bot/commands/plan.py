"""`cocktail plan FILE [--json]`: pinned sources, steps, weights and size estimates, without downloading."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="show what `cocktail run` would do, without downloading weights"
    )
    parser.add_argument("manifest", metavar="FILE", help="the cocktail.yml manifest")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from cocktail_bot.manifest import load_manifest
    from cocktail_bot.plan import build_plan, render_plan

    plan = build_plan(load_manifest(args.manifest))
    print(plan.model_dump_json(indent=2) if args.json else render_plan(plan), end="\n" if args.json else "")
    return 0

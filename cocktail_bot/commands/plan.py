"""`cocktail plan FILE [--json]`: pinned sources, steps, weights and size estimates, without downloading."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="show what `cocktail run` would do, without downloading weights"
    )
    parser.add_argument("manifest", metavar="FILE", help="the cocktail.yml manifest")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--out",
        default=".",
        metavar="DIR",
        help="where the run would write (its filesystem's free space is checked; default: here)",
    )
    parser.add_argument("--device", help="the run's --device, if it will be given one")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    """Print the plan, then refuse (exit 2) if the run would not fit this machine."""
    from pathlib import Path

    from cocktail_bot.manifest import load_manifest
    from cocktail_bot.plan import build_plan, render_plan, with_preflight
    from cocktail_bot.preflight import require

    manifest = load_manifest(args.manifest, outside_folders=True)
    plan = with_preflight(build_plan(manifest), manifest, Path(args.out), device=args.device)
    print(plan.model_dump_json(indent=2) if args.json else render_plan(plan), end="\n" if args.json else "")
    assert plan.preflight is not None
    require(plan.preflight)
    return 0

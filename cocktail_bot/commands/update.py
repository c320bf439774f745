"""`cocktail update FILE [--plan] [--json]`: rebuild when a source named by a branch or tag moved on the Hub."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "update",
        help="check whether Hub sources named by a branch or tag moved since the lock; rebuild if so",
    )
    parser.add_argument("manifest", metavar="FILE", help="the cocktail.yml manifest (its lock must exist)")
    parser.add_argument("--plan", action="store_true", help="only report what moved; rebuild nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="keep the rebuilt model in DIR (default: built in a temporary folder; only the lock is kept)",
    )
    parser.add_argument(
        "--lock",
        metavar="PATH",
        help="the lock to check and rewrite (default: the manifest's .lock beside it)",
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N, as for `cocktail run`")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from cocktail_bot.update import render_text, update_manifest

    result, _ = update_manifest(
        args.manifest,
        args.out,
        plan=args.plan,
        lock_path=args.lock,
        force=args.force,
        device=args.device,
        progress=args.progress,
    )
    print(result.model_dump_json(indent=2) if args.json else render_text(result, plan=args.plan), end="")
    if args.json:
        print()
    return 0

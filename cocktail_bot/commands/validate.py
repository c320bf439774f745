"""`cocktail validate FILE...`: check manifests, every problem at once, as `FILE:LINE: field: message`."""

from __future__ import annotations

from cocktail_bot.errors import CocktailError


def register(subparsers) -> None:
    parser = subparsers.add_parser("validate", help="check cocktail.yml manifests (exit 2 on any problem)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="manifest(s) to check")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from cocktail_bot.manifest import load_manifest

    failed: list[str] = []
    for file in args.files:
        try:
            manifest = load_manifest(file, outside_folders=True)
        except CocktailError as error:
            failed.append(str(error))
            continue
        steps = len(manifest.steps)
        sources = len(manifest.external_sources())
        print(f"{file}: ok ({steps} step{'s' * (steps != 1)}, {sources} source{'s' * (sources != 1)})")
    if failed:
        raise CocktailError("\n".join(failed))
    return 0

"""`cocktail publish` (placeholder until its issue lands: replace this whole module)."""

from cocktail_bot.errors import CocktailError


def register(subparsers) -> None:
    parser = subparsers.add_parser("publish", help="(not yet available)")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    raise CocktailError("'cocktail publish' is not available yet")

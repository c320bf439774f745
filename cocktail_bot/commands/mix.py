"""`cocktail mix` (placeholder until its issue lands: replace this whole module)."""

from cocktail_bot.errors import CocktailError


def register(subparsers) -> None:
    parser = subparsers.add_parser("mix", help="(not yet available)")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    raise CocktailError("'cocktail mix' is not available yet")

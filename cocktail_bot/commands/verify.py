"""`cocktail verify` (placeholder until its issue lands: replace this whole module)."""

from cocktail_bot.errors import CocktailError


def register(subparsers) -> None:
    parser = subparsers.add_parser("verify", help="(not yet available)")
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    raise CocktailError("'cocktail verify' is not available yet")

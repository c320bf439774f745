"""One module per ``cocktail`` subcommand: ``register(subparsers)`` adds it and sets ``handler``."""

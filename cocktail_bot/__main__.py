"""``python -m cocktail_bot`` is the ``cocktail`` command."""

from cocktail_bot.cli import console

console()

"""``python -m cocktail_bot`` is the ``cocktail`` command."""

from cocktail_bot.cli import main

raise SystemExit(main())

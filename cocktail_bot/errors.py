"""The one exception type users see: a message they can act on, printed without a traceback."""

from __future__ import annotations

# A log record with this attribute set (``extra={ONCE: True}``) is shown once per command: a note that every
# model or step of a run would repeat.
ONCE = "cocktail_once"


class CocktailError(Exception):
    """A problem the user can fix (bad input, missing model, refused upload).

    The CLI prints ``error: <message>`` and exits with ``exit_code``; nothing is half-written when it is raised.
    ``exit_code`` is 2 for bad input (manifest, arguments, models) and 1 for failures of a remote service.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class RemoteError(CocktailError):
    """The Hugging Face Hub or GitHub refused or failed a request after retries."""

    exit_code = 1

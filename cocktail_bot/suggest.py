"""The one "did you mean" of every error message that names something unknown (a key, a method, a step)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice ``word`` was most likely meant to be, or None if none is close."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """'did you mean X?' when a choice is close, else the choices: the end of an 'unknown ...' message."""
    close = closest(word, choices)
    if close is not None:
        return f"did you mean {close!r}?"
    return "expected one of " + ", ".join(choices)

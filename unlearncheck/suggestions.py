"""“Did you mean …?”: the closest known name to a misspelled one, for error messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean"]

#: How alike a known name must be (difflib's ratio) to be suggested.
CUTOFF = 0.6


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name``, if one is close enough."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=CUTOFF)
    return close[0] if close else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``name``, or ``""`` if none is
    close; appended to the message that lists the known names."""
    close = closest(name, known)
    return f" (did you mean {close!r}?)" if close else ""

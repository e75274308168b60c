"""Untrusted text (model output, prompts, entity names, model specs) shown so that it only shows.

Such text is shown as it is, except for the characters that would act on a terminal or a page
instead of showing: control characters (NUL, carriage return, backspace, the ESC that starts ANSI
escape sequences, the C1 controls), format characters (bidi overrides such as U+202E that
reverse the text after them, zero-width characters), line and paragraph separators, and lone
surrogates (which no UTF-8 file or terminal can hold). `shown` writes each as its Python escape
(``\\x1b``, ``\\u202e``, ``\\udcff``) and leaves backslashes as they are, so an escape character
and the four characters ``\\x1b`` look alike; `quoted` is ``repr``, which tells them apart. Both
cut text beyond a limit and say so; the run log keeps the full text.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["quoted", "shown"]


#: Unicode categories of the characters `shown` escapes: controls, format characters, surrogates,
#: line separators and paragraph separators.
_ACTIVE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_BEYOND_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def _escape_character(char: str) -> str:
    """The Python escape of one character: ``\\x1b``, ``\\u202e`` or ``\\U000e0001``."""
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _cut_marker(text: str, limit: int) -> str:
    """What follows text cut at ``limit`` characters (nothing when it was not cut)."""
    return f" … [cut: {limit:,} of {len(text):,} characters shown]" if len(text) > limit else ""


def shown(text: str, *, limit: int, keep: str = "") -> str:
    """``text`` with its active characters escaped, cut after ``limit`` characters.

    Args:
        text: Untrusted text.
        limit: How many characters of ``text`` are shown; longer text ends with a marker giving
            its length.
        keep: Active characters shown as they are (``"\\n\\t"`` where line breaks may show).

    Returns:
        Text without any character of `_ACTIVE_CATEGORIES` outside ``keep``.
    """

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep or unicodedata.category(char) not in _ACTIVE_CATEGORIES:
            return char
        return _escape_character(char)

    return _BEYOND_PRINTABLE_ASCII.sub(escape, text[:limit]) + _cut_marker(text, limit)


def quoted(text: str, *, limit: int) -> str:
    """``repr`` of ``text`` cut after ``limit`` characters (every non-printable one escaped)."""
    return repr(text[:limit]) + _cut_marker(text, limit)

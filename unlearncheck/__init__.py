"""unlearncheck: a pytest-style test framework for unlearning claims about language models.

Heavy modules (torch, transformers) load only when a claim or a model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unlearncheck.facts import Fact, FactFormatError, FactSet, load_facts, load_tofu

if TYPE_CHECKING:
    from unlearncheck import attacks
    from unlearncheck.claims import assert_forgotten, assert_retained
    from unlearncheck.verdict import ForgettingAssertionError, InconclusiveError, Verdict

__all__ = [
    "Fact",
    "FactFormatError",
    "FactSet",
    "ForgettingAssertionError",
    "InconclusiveError",
    "Verdict",
    "assert_forgotten",
    "assert_retained",
    "attacks",
    "load_facts",
    "load_tofu",
]

_LAZY = {
    "assert_forgotten": "unlearncheck.claims",
    "assert_retained": "unlearncheck.claims",
    "ForgettingAssertionError": "unlearncheck.verdict",
    "InconclusiveError": "unlearncheck.verdict",
    "Verdict": "unlearncheck.verdict",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "attacks":
        return importlib.import_module("unlearncheck.attacks")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unlearncheck' has no attribute {name!r}")

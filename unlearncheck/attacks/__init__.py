"""Attacks that try to bring "forgotten" knowledge back (METHODS.md)."""

from unlearncheck.attacks.input import (
    INPUT_ATTACKS,
    InputAttack,
    ProbeContext,
    alias,
    direct,
    incontext,
    multihop,
    paraphrase,
    prefix,
)

__all__ = [
    "INPUT_ATTACKS",
    "InputAttack",
    "ProbeContext",
    "alias",
    "direct",
    "incontext",
    "multihop",
    "paraphrase",
    "prefix",
]

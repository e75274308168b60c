"""Attacks that try to bring "forgotten" knowledge back (METHODS.md).

Input attacks derive new prompts; model attacks (``quant4``, ``quant4_fp4``, ``quant8``,
``relearn``) derive a variant of the model and ask it again; readout attacks (``sampling``,
``hidden_probe``) read the knowledge another way; ``psg`` compares forgetting on the forget items
and on surrogate rewrites of them. Model and readout attacks load torch, so they are imported on
first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

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

# Imported here, not on first use: the submodule ``psg`` would shadow a lazily exported ``psg``.
from unlearncheck.attacks.psg import PSGAttack, psg

_LAZY = {
    "ModelAttack": "model",
    "MODEL_ATTACKS": "model",
    "make_relearn": "model",
    "quant4": "model",
    "quant4_fp4": "model",
    "quant8": "model",
    "relearn": "model",
    "HiddenProbeAttack": "readout",
    "SamplingAttack": "readout",
    "hidden_probe": "readout",
    "sampling": "readout",
    "FULL_ATTACKS": "",
}

__all__ = [
    "INPUT_ATTACKS",
    "InputAttack",
    "PSGAttack",
    "ProbeContext",
    "alias",
    "direct",
    "incontext",
    "multihop",
    "paraphrase",
    "prefix",
    "psg",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name == "FULL_ATTACKS":
        model = import_module("unlearncheck.attacks.model")
        readout = import_module("unlearncheck.attacks.readout")
        return (*INPUT_ATTACKS, *model.MODEL_ATTACKS, readout.sampling, readout.hidden_probe)
    if name in _LAZY:
        return getattr(import_module(f"unlearncheck.attacks.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'unlearncheck.attacks' has no attribute {name!r}")

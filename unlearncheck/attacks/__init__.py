"""Attacks that try to bring "forgotten" knowledge back (docs/methods.md).

Every attack implements one protocol (`Attack`, in `unlearncheck.attacks.base`): a ``name``, the
model capabilities it ``needs`` and a ``run`` over a claim's facts. Input attacks derive new
prompts; model attacks (``quant4``, ``quant4_fp4``, ``quant8``, ``relearn``) derive a variant of
the model and ask it again; readout attacks (``sampling``, ``hidden_probe``, ``original_head``)
read the knowledge another way; ``psg`` compares forgetting on the forget items and on surrogate
rewrites of them. Model and readout attacks load torch, so they are imported on first use
(``original_head`` is imported with the package but imports torch only when it runs).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from unlearncheck.attacks.base import (
    Attack,
    AttackResult,
    ClaimModels,
    ClaimScorer,
    OptionalAttack,
    optional,
)
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.input import (
    INPUT_ATTACKS,
    InputAttack,
    alias,
    direct,
    incontext,
    multihop,
    paraphrase,
    prefix,
)

# Imported here, not on first use, like ``psg`` below: the submodule would shadow the attack (it
# loads torch only when it runs).
from unlearncheck.attacks.original_head import OriginalHeadAttack, original_head

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
    "HiddenProbeAttack": "hidden_readout",
    "SamplingAttack": "sampling_readout",
    "hidden_probe": "hidden_readout",
    "sampling": "sampling_readout",
    "FULL_ATTACKS": "",
}

__all__ = [
    "INPUT_ATTACKS",
    "Attack",
    "AttackResult",
    "ClaimModels",
    "ClaimScorer",
    "InputAttack",
    "OptionalAttack",
    "OriginalHeadAttack",
    "PSGAttack",
    "ProbeContext",
    "alias",
    "direct",
    "incontext",
    "multihop",
    "optional",
    "original_head",
    "paraphrase",
    "prefix",
    "psg",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name == "FULL_ATTACKS":
        model = import_module("unlearncheck.attacks.model")
        sampling = import_module("unlearncheck.attacks.sampling_readout")
        hidden_probe = import_module("unlearncheck.attacks.hidden_readout")
        return (
            *INPUT_ATTACKS,
            *model.MODEL_ATTACKS,
            sampling.sampling,
            hidden_probe.hidden_probe,
            original_head,
        )
    if name in _LAZY:
        return getattr(import_module(f"unlearncheck.attacks.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'unlearncheck.attacks' has no attribute {name!r}")

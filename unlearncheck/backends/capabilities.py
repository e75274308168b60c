"""What a model can do, as protocols: the boundary between claims and backends.

Attacks and metrics ask for capabilities, never for a backend class. A capability is named in a
model's ``capabilities`` set and described by a protocol here:

- ``scores``: batched answer log-likelihoods (`ScoringModel`), which every model has;
- ``generation``: continuing prompts, greedy or sampled (`GeneratingModel`);
- ``weights``: the weights themselves, so derived copies (quantized, fine-tuned) can be made
  (`unlearncheck.backends.hf.HFModel`);
- ``hidden_states``: hidden states at the last prompt token (`HiddenStateModel`).

A local Hugging Face checkpoint has all four; an OpenAI-compatible endpoint has ``scores`` and
``generation``; a linear probe readout has ``scores`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CAPABILITIES",
    "Capability",
    "GeneratingModel",
    "HiddenStateModel",
    "LogLikelihood",
    "ScoringModel",
    "capabilities_of",
    "missing_capabilities",
]

Capability = Literal["scores", "generation", "weights", "hidden_states"]
CAPABILITIES: tuple[Capability, ...] = ("scores", "generation", "weights", "hidden_states")


class LogLikelihood(Protocol):
    """One continuation's score: total log-probability over its tokens."""

    @property
    def logprob(self) -> float: ...

    @property
    def n_tokens(self) -> int: ...


class ScoringModel(Protocol):
    """The ``scores`` capability: an identity and batched answer log-likelihoods."""

    spec: str

    @property
    def content_hash(self) -> str: ...

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = ...
    ) -> Sequence[LogLikelihood]: ...


class GeneratingModel(ScoringModel, Protocol):
    """The ``generation`` capability: a scoring model that also continues prompts."""

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = ...,
        do_sample: bool = ...,
        temperature: float = ...,
        top_p: float = ...,
        num_samples: int = ...,
        seed: int | None = ...,
        batch_size: int = ...,
    ) -> list[list[str]]: ...


class HiddenStateModel(ScoringModel, Protocol):
    """The ``hidden_states`` capability: per-layer hidden states at each prompt's last token."""

    def hidden_states(
        self, prompts: Sequence[str], *, layers: Sequence[int] | None = ..., batch_size: int = ...
    ) -> np.ndarray: ...


def capabilities_of(model: object) -> frozenset[Capability]:
    """The capabilities a model declares (its ``capabilities`` attribute; ``scores`` if none)."""
    declared = getattr(model, "capabilities", None)
    return frozenset(declared) if declared is not None else frozenset({"scores"})


def missing_capabilities(model: object, needs: frozenset[Capability]) -> list[Capability]:
    """The capabilities of ``needs`` that ``model`` lacks, in `CAPABILITIES` order."""
    has = capabilities_of(model)
    return [c for c in CAPABILITIES if c in needs and c not in has]

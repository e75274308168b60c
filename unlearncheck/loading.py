"""Models from specs: each spec is loaded once a process and shared by every claim."""

from __future__ import annotations

from typing import TypeVar, overload

from unlearncheck.backends.capabilities import ScoringModel
from unlearncheck.backends.hf import PROMPT_FORMATS, HFModel, PromptFormat
from unlearncheck.backends.hf_loading import DTYPES
from unlearncheck.backends.openai_api import OpenAIModel, is_openai_spec

__all__ = ["LoadedModel", "ModelLike", "load_model"]

LoadedModel = HFModel | OpenAIModel
#: A model as a claim takes it: a spec string (`load_model`), or any object with the capabilities
#: a claim needs (`unlearncheck.backends.capabilities`): `HFModel`, `OpenAIModel` or your own.
ModelLike = ScoringModel | str
_Model = TypeVar("_Model", bound=ScoringModel)

#: (spec, device, dtype, prompt format, allow_pickle, trust_remote_code) -> the loaded model.
_LOADED: dict[tuple[str, str | None, str | None, str, bool, bool], LoadedModel] = {}


@overload
def load_model(
    model: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    prompt_format: PromptFormat = "auto",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> LoadedModel: ...


@overload
def load_model(
    model: _Model,
    *,
    device: str | None = None,
    dtype: str | None = None,
    prompt_format: PromptFormat = "auto",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> _Model: ...


def load_model(
    model: ScoringModel | str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    prompt_format: PromptFormat = "auto",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> ScoringModel:
    """A loaded model for a spec string (loaded once a process and set of options) or the model
    itself.

    ``openai:<name>@<base_url>`` is an OpenAI-compatible endpoint (a black box: its server decides
    its dtype and how it reads prompts, so ``dtype`` and ``prompt_format`` are not used); any
    other spec is a Hugging Face checkpoint (see `unlearncheck.specs.resolve_spec`), loaded from
    safetensors (one file or shards) unless ``allow_pickle`` and without its own code unless
    ``trust_remote_code`` (`HFModel.load`).

    Args:
        model: A spec, or a model (returned as it is).
        device: Torch device, or ``auto`` to spread the model over the visible GPUs (None: cuda
            when available, else cpu).
        dtype: ``auto`` (or None): bfloat16 on CUDA, float32 elsewhere; or ``float32``,
            ``bfloat16``, ``float16``.
        prompt_format: ``auto``: the tokenizer's chat template when it has one; ``chat``;
            ``plain`` (`unlearncheck.backends.hf.PromptFormat`).
        allow_pickle: Load pickle weights of a checkpoint without safetensors.
        trust_remote_code: Run the code a checkpoint ships.

    Raises:
        ModelSpecError: If the spec resolves to no local checkpoint or the checkpoint is refused.
        ValueError: If the dtype, the prompt format or the device is unknown, or ``chat`` is
            asked of a tokenizer without a chat template.
    """
    if not isinstance(model, str):
        return model
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"prompt format {prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}"
        )
    dtype = None if dtype == "auto" else dtype
    key = (model, device, dtype, prompt_format, allow_pickle, trust_remote_code)
    if key not in _LOADED:
        _LOADED[key] = (
            OpenAIModel.from_spec(model)
            if is_openai_spec(model)
            else HFModel.load(
                model,
                device=device,
                dtype=dtype,
                prompt_format=prompt_format,
                allow_pickle=allow_pickle,
                trust_remote_code=trust_remote_code,
            )
        )
    return _LOADED[key]

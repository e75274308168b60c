"""Models from specs: each spec is loaded once a process and shared by every claim."""

from __future__ import annotations

from typing import TypeVar, overload

from unlearncheck.backends.capabilities import ScoringModel
from unlearncheck.backends.hf import HFModel
from unlearncheck.backends.openai_api import OpenAIModel, is_openai_spec

__all__ = ["LoadedModel", "ModelLike", "load_model"]

LoadedModel = HFModel | OpenAIModel
#: A model as a claim takes it: a spec string (`load_model`), or any object with the capabilities
#: a claim needs (`unlearncheck.backends.capabilities`): `HFModel`, `OpenAIModel` or your own.
ModelLike = ScoringModel | str
_Model = TypeVar("_Model", bound=ScoringModel)

_LOADED: dict[tuple[str, str | None, bool, bool], LoadedModel] = {}


@overload
def load_model(
    model: str,
    *,
    device: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> LoadedModel: ...


@overload
def load_model(
    model: _Model,
    *,
    device: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> _Model: ...


def load_model(
    model: ScoringModel | str,
    *,
    device: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> ScoringModel:
    """A loaded model for a spec string (loaded once a process) or the model itself.

    ``openai:<name>@<base_url>`` is an OpenAI-compatible endpoint (a black box); any other spec
    is a Hugging Face checkpoint (see `unlearncheck.specs.resolve_spec`), loaded from safetensors
    unless ``allow_pickle`` and without its own code unless ``trust_remote_code`` (`HFModel.load`).
    """
    if not isinstance(model, str):
        return model
    key = (model, device, allow_pickle, trust_remote_code)
    if key not in _LOADED:
        _LOADED[key] = (
            OpenAIModel.from_spec(model)
            if is_openai_spec(model)
            else HFModel.load(
                model,
                device=device,
                allow_pickle=allow_pickle,
                trust_remote_code=trust_remote_code,
            )
        )
    return _LOADED[key]

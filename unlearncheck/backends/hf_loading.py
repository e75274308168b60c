"""Read a Hugging Face checkpoint for `unlearncheck.backends.hf.HFModel.load`.

Everything is checked before a weight is read: the device, the dtype, the checkpoint
(`unlearncheck.specs.check_checkpoint`) and that the tokenizer fits the embedding.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from unlearncheck.specs import (
    SPREAD,
    ModelSpecError,
    check_checkpoint,
    resolve_device,
    resolve_spec,
)

__all__ = ["DTYPES", "load_checkpoint"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The dtypes a checkpoint loads in: ``auto`` is bfloat16 on CUDA and float32 elsewhere.
DTYPES: tuple[str, ...] = ("auto", *_DTYPES)


def load_checkpoint(
    spec: str,
    *,
    device: str | None,
    dtype: str | None,
    allow_pickle: bool,
    trust_remote_code: bool,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device, Path]:
    """Load the model and tokenizer of a spec, as `unlearncheck.backends.hf.HFModel.load` does.

    The arguments are those of `HFModel.load`.

    Returns:
        The model (on its device, or spread over the GPUs for device ``auto``), its tokenizer,
        the device its inputs go to, and the checkpoint directory.

    Raises:
        ModelSpecError: If the spec resolves to no local checkpoint, the checkpoint is refused,
            or its config, tokenizer or weights cannot be read, or its tokenizer does not fit
            its embedding.
        ValueError: If the device or the dtype is unknown, or the device is ``auto`` and
            accelerate is missing or cannot place the model.
    """
    target = resolve_device(device)
    torch_dtype = _torch_dtype(dtype, target)
    path = resolve_spec(spec)
    check_checkpoint(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    config, tokenizer = _read_config_and_tokenizer(path, trust_remote_code)
    _check_vocabulary(path, tokenizer, config)
    model = _load_weights(
        path,
        config,
        dtype=torch_dtype,
        device=device,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    if device == SPREAD:
        target = model.device  # where inputs go: the first layers' device
    else:
        # PreTrainedModel.to is @wraps(nn.Module.to), which mypy mis-binds.
        model = model.to(target)  # type: ignore[arg-type]
    return model, tokenizer, target, Path(path)


def _torch_dtype(dtype: str | None, target: torch.device) -> torch.dtype:
    """The torch dtype named ``dtype``; bfloat16 on CUDA and float32 elsewhere when None or
    ``auto``.

    Raises:
        ValueError: If the dtype is unknown.
    """
    if dtype is None or dtype == "auto":
        dtype = "bfloat16" if target.type == "cuda" else "float32"
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return _DTYPES[dtype]


def _read_config_and_tokenizer(
    path: Path, trust_remote_code: bool
) -> tuple[PreTrainedConfig, PreTrainedTokenizerBase]:
    """A checkpoint's config and tokenizer.

    Raises:
        ModelSpecError: If either cannot be read.
    """
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelSpecError(f"{path}: cannot read its config or tokenizer: {err}") from err
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ModelSpecError(
            f"{path}: its tokenizer has neither a pad nor an eos token, so batches cannot be "
            "padded nor generation ended; set pad_token or eos_token in tokenizer_config.json"
        )
    return config, tokenizer


def _load_weights(
    path: Path,
    config: PreTrainedConfig,
    *,
    dtype: torch.dtype,
    device: str | None,
    allow_pickle: bool,
    trust_remote_code: bool,
) -> PreTrainedModel:
    """A checkpoint's causal LM, on the CPU or, for device ``auto``, over all visible GPUs.

    Raises:
        ModelSpecError: If the weights cannot be read.
        ValueError: If the device is ``auto`` and accelerate is missing or cannot place the
            model.
    """
    try:
        with _weight_bar_on_terminals():
            loaded = AutoModelForCausalLM.from_pretrained(
                path,
                config=config,
                use_safetensors=None if allow_pickle else True,
                trust_remote_code=trust_remote_code,
                dtype=dtype,
                device_map=SPREAD if device == SPREAD else None,
                output_loading_info=True,
            )
    except (OSError, SafetensorError) as err:
        raise ModelSpecError(f"{path}: cannot load its weights: {err}") from err
    except ImportError as err:  # device_map without accelerate
        raise ValueError(f"device {device!r} needs the accelerate package: {err}") from err
    except RuntimeError as err:  # a tensor whose shape the config does not give
        shapes = _mismatched_shapes(path, config) or str(err)
        raise ModelSpecError(f"{path}: its weights do not match config.json: {shapes}") from err
    except ValueError as err:
        if device == SPREAD:  # a model class accelerate cannot split, weights it cannot place
            raise ValueError(
                f"device {SPREAD!r} (transformers' device_map='auto' over the visible GPUs) "
                f"cannot place {path}: {err}; name one device instead (cuda, cpu)"
            ) from err
        raise ModelSpecError(f"{path}: cannot load its weights: {err}") from err
    model, info = cast("tuple[PreTrainedModel, dict[str, list]]", loaded)
    _check_tensors(path, info)
    return model


def _mismatched_shapes(path: Path, config: PreTrainedConfig) -> str:
    """The checkpoint's tensors whose shape differs from what ``config`` builds ("" when none
    is found): the model is built on the meta device, so nothing is allocated."""
    from safetensors import safe_open

    with torch.device("meta"):
        expected = {
            k: tuple(v.shape)
            for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()
        }
    found = []
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shape = tuple(weights.get_slice(key).get_shape())
                if key in expected and expected[key] != shape:
                    want = list(expected[key])
                    found.append(f"{key} is {list(shape)} in {file.name}, {want} by config.json")
    shown = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
    return f"{len(found)} tensor(s) shaped differently: {shown}" if found else ""


def _check_tensors(path: Path, info: dict[str, list]) -> None:
    """Refuse weights that do not match the config tensor for tensor: a tensor the model needs
    that the checkpoint lacks would be left randomly initialized, and one it has that the model
    does not use (a config with fewer layers) would be dropped.

    Raises:
        ModelSpecError: Naming the missing, unexpected or mis-shaped tensors.
    """
    problems = []
    for key, what in (
        ("missing_keys", "missing from the checkpoint (they would be random)"),
        ("unexpected_keys", "in the checkpoint but not in the model config.json describes"),
        ("mismatched_keys", "shaped differently from config.json"),
    ):
        names = sorted(str(n[0] if isinstance(n, tuple) else n) for n in info.get(key) or ())
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{len(names)} tensors {what}: {shown}")
    if problems:
        raise ModelSpecError(
            f"{path}: the weights do not match config.json: " + "; ".join(problems)
        )


def _check_vocabulary(
    path: Path, tokenizer: PreTrainedTokenizerBase, config: PreTrainedConfig
) -> None:
    """Refuse a tokenizer whose ids run past the model's embedding (they would index out of it)."""
    rows = getattr(config.get_text_config(), "vocab_size", None)
    if rows is not None and len(tokenizer) > rows:
        raise ModelSpecError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
            f"{rows} rows (config.json vocab_size): token ids from {rows} up would index past "
            "it, so the tokenizer does not belong to this model"
        )


@contextmanager
def _weight_bar_on_terminals() -> Iterator[None]:
    """transformers' "Loading weights" bar only where a person watches a terminal.

    A claim loads several models and an attack derives more; written to a log, a captured test
    output or a pipe, each load leaves a bar of carriage returns. transformers' switch is global,
    so it is restored as it was.
    """
    shown = hf_logging.is_progress_bar_enabled()
    quiet = shown and not sys.stderr.isatty()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()

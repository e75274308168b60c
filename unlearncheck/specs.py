"""Resolution of model specs (organism names, local directories, cached hub ids) to paths, and
the checks a checkpoint passes before any of it is loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "ENDPOINT_PREFIX",
    "ORGANISM_PREFIX",
    "SPREAD",
    "ModelSpecError",
    "check_checkpoint",
    "check_spec",
    "resolve_device",
    "resolve_spec",
]


ORGANISM_PREFIX = "organism:"
#: The prefix of an OpenAI-compatible endpoint spec (`unlearncheck.backends.openai_api`).
ENDPOINT_PREFIX = "openai:"
#: Weight files that are pickles: unpickling one can run any code the file carries.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Files of which a checkpoint's tokenizer needs at least one.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


class ModelSpecError(ValueError):
    """A model spec could not be resolved to a local checkpoint, or the checkpoint is refused."""


def resolve_spec(spec: str) -> Path:
    """Resolve a model spec to a local checkpoint directory without downloading anything.

    Accepted forms, tried in this order:

    * ``organism:<variant>`` or ``organism:<variant>@seed=<n>``: a checkpoint of the model
      organism zoo, located by ``unlearncheck.organism.checkpoint_path``.
    * A path to an existing directory.
    * A Hugging Face hub id (``org/name``), looked up in the local hub cache only.

    Args:
        spec: The model spec.

    Returns:
        The checkpoint directory.

    Raises:
        ModelSpecError: If the spec is malformed or names no local checkpoint.
    """
    if spec.startswith(ORGANISM_PREFIX):
        return _resolve_organism(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError) as err:
        raise ModelSpecError(
            f"cannot resolve model spec {spec!r}: it is not an existing directory and not a "
            f"Hugging Face hub id in the local cache ({HF_HUB_CACHE}); downloads are disabled, "
            f"so fetch the model into the cache first ({err})"
        ) from err


def _organism_parts(spec: str) -> tuple[str, int]:
    """The variant and seed of an ``organism:<variant>[@seed=<n>]`` spec."""
    variant, sep, option = spec.removeprefix(ORGANISM_PREFIX).partition("@")
    seed = 0
    if sep:
        key, _, value = option.partition("=")
        if key != "seed" or not value.isdigit():
            raise ModelSpecError(f"malformed organism spec {spec!r}: expected '@seed=<n>'")
        seed = int(value)
    if not variant:
        raise ModelSpecError(f"malformed organism spec {spec!r}: missing variant name")
    return variant, seed


def _resolve_organism(spec: str) -> Path:
    """Resolve an ``organism:<variant>[@seed=<n>]`` spec (see `resolve_spec`)."""
    variant, seed = _organism_parts(spec)
    from unlearncheck.organism import checkpoint_path

    try:
        path = checkpoint_path(variant, seed=seed)
    except ValueError as err:  # an unknown variant
        raise ModelSpecError(f"organism spec {spec!r}: {err}") from err
    if not path.is_dir():
        raise ModelSpecError(
            f"organism spec {spec!r} resolves to {path}, which does not exist; build the "
            "organism zoo first"
        )
    return path


def check_spec(spec: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
    """Check a model spec without loading, building or downloading anything.

    An endpoint spec is left to its backend; an organism spec must be well formed and name a
    variant of the zoo; any other spec must resolve to a checkpoint that passes
    `check_checkpoint`.

    Raises:
        ModelSpecError: If the spec or its checkpoint is refused; the message says why.
    """
    if spec.startswith(ENDPOINT_PREFIX):
        return
    if spec.startswith(ORGANISM_PREFIX):
        variant, _ = _organism_parts(spec)
        from unlearncheck.organism.zoo import VARIANTS

        if variant not in VARIANTS:
            raise ModelSpecError(
                f"organism spec {spec!r}: unknown organism variant {variant!r}; "
                f"known: {', '.join(VARIANTS)}"
            )
        return
    check_checkpoint(
        resolve_spec(spec), allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )


def check_checkpoint(
    path: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> None:
    """Refuse a checkpoint directory that cannot be loaded as asked, before reading its weights.

    The directory needs a ``config.json``, safetensors weights (or, with ``allow_pickle``,
    pickle weights such as ``pytorch_model.bin``: unpickling runs any code the file holds) and
    tokenizer files; without ``trust_remote_code`` neither its config nor its tokenizer config
    may point at code shipped with it (``auto_map``).

    Raises:
        ModelSpecError: If the checkpoint is refused; the message names the file and the option
            that allows what was refused, where there is one.
    """
    config = _json_object(path / "config.json")
    if not trust_remote_code:
        _refuse_remote_code(path / "config.json", config)
        tokenizer_config = path / "tokenizer_config.json"
        if tokenizer_config.is_file():
            _refuse_remote_code(tokenizer_config, _json_object(tokenizer_config))
    files = [p.name for p in path.iterdir() if p.is_file()]
    pickles = sorted(n for n in files if n.endswith(_PICKLE_SUFFIXES))
    if not any(n.endswith(".safetensors") for n in files):
        if not pickles:
            raise ModelSpecError(
                f"{path}: no weights: neither *.safetensors nor pickle weights "
                f"({', '.join(f'*{s}' for s in _PICKLE_SUFFIXES)})"
            )
        if not allow_pickle:
            raise ModelSpecError(
                f"{path}: refused: its weights are pickle only ({', '.join(pickles)}), and "
                "unpickling a file can execute arbitrary code. Convert the checkpoint to "
                "safetensors, or, if you trust it, pass --uc-allow-pickle (ini uc_allow_pickle "
                "= true; allow_pickle=True in the library)"
            )
    if not any(name in files for name in _TOKENIZER_FILES):
        raise ModelSpecError(
            f"{path}: no tokenizer: none of {', '.join(_TOKENIZER_FILES)}; save the tokenizer "
            "with the model (tokenizer.save_pretrained)"
        )


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a missing or malformed file is a `ModelSpecError`."""
    if not path.is_file():
        raise ModelSpecError(f"{path}: no such file: not a transformers checkpoint directory")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelSpecError(f"{path}: not a JSON file: {err}") from err
    if not isinstance(value, dict):
        raise ModelSpecError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _refuse_remote_code(path: Path, config: dict[str, Any]) -> None:
    """Refuse a config (read from ``path``) whose ``auto_map`` points at code of the checkpoint."""
    auto_map = config.get("auto_map")
    if auto_map:
        raise ModelSpecError(
            f"{path}: refused: its auto_map ({', '.join(map(str, auto_map))}) loads code shipped "
            "with the checkpoint, which would run on this machine. If you trust it, pass "
            "--uc-trust-remote-code (ini uc_trust_remote_code = true; trust_remote_code=True in "
            "the library)"
        )


#: The device that spreads a model over every visible GPU (and the CPU when they are full):
#: transformers' ``device_map="auto"``, which needs the ``accelerate`` package.
SPREAD = "auto"


def resolve_device(device: str | None) -> torch.device:
    """The torch device named ``device`` (None, or `SPREAD`: ``cuda`` when available, else
    ``cpu``; for `SPREAD`, where the model's first layers go).

    Raises:
        ValueError: If torch knows no such device, or it is a CUDA device this machine lacks.
    """
    import torch

    if device is None or device == SPREAD:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r}: {err}") from err
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (target.index or 0) >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    return target

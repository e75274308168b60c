"""Resolution of model specs (organism names, local directories, cached hub ids) to paths, and
the checks a checkpoint passes before any of it is loaded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearncheck.suggestions import closest, did_you_mean

if TYPE_CHECKING:
    import torch

__all__ = [
    "ENDPOINT_PREFIX",
    "MAX_SEED",
    "ORGANISM_PREFIX",
    "REAL_ORGANISM_PREFIX",
    "SPREAD",
    "ModelSpecError",
    "check_checkpoint",
    "check_prompt_format",
    "check_seed",
    "check_spec",
    "has_chat_template",
    "resolve_device",
    "resolve_spec",
]


ORGANISM_PREFIX = "organism:"
#: The largest seed: torch, numpy and random all take 0 to 2**63 - 1.
MAX_SEED = 2**63 - 1
#: ``organism-real:<variant>``: a variant of the real organism (`unlearncheck.organism.real`).
REAL_ORGANISM_PREFIX = "organism-real:"
#: The prefix of an OpenAI-compatible endpoint spec (`unlearncheck.backends.openai_api`).
ENDPOINT_PREFIX = "openai:"
#: Weight files that are pickles: unpickling one can run any code the file carries.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: The weights of a checkpoint in one safetensors file, and the index of a sharded one (which names
#: the shard file of every tensor: ``model-00001-of-00004.safetensors``, …).
_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
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
    * ``organism-real:<variant>``: a checkpoint of the real organism (SmolLM2-135M-Instruct and
      its unlearned variants, `unlearncheck.organism.real.real_checkpoint_path`).
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
    if spec.startswith(REAL_ORGANISM_PREFIX):
        return _resolve_real_organism(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError) as err:
        prefix, colon, variant = spec.partition(":")
        known = closest(prefix + colon, (ORGANISM_PREFIX, REAL_ORGANISM_PREFIX)) if colon else None
        hint = f" (did you mean {known + variant!r}?)" if known else ""
        raise ModelSpecError(
            f"cannot resolve model spec {spec!r}{hint}: it is not an existing directory and not "
            f"a Hugging Face hub id in the local cache ({HF_HUB_CACHE}); downloads are disabled, "
            f"so fetch the model into the cache first ({err})"
        ) from err


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` when it is a whole number from 0 to `MAX_SEED`.

    Raises:
        ValueError: Naming ``what`` and the value.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what} must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    return seed


def _organism_parts(spec: str) -> tuple[str, int]:
    """The variant and seed of an ``organism:<variant>[@seed=<n>]`` spec."""
    variant, sep, option = spec.removeprefix(ORGANISM_PREFIX).partition("@")
    seed = 0
    if sep:
        key, _, value = option.partition("=")
        if key != "seed" or not re.fullmatch(r"[0-9]{1,100}", value):  # ASCII, as int() is not
            raise ModelSpecError(f"malformed organism spec {spec!r}: expected '@seed=<n>'")
        try:
            seed = check_seed(int(value), "the seed")
        except ValueError as err:
            raise ModelSpecError(f"organism spec {spec!r}: {err}") from None
    if not variant:
        raise ModelSpecError(f"malformed organism spec {spec!r}: missing variant name")
    return variant, seed


def _resolve_real_organism(spec: str) -> Path:
    """Resolve an ``organism-real:<variant>`` spec, building the real organism on first use."""
    from unlearncheck.organism.real import REAL_VARIANTS, real_checkpoint_path

    variant = spec.removeprefix(REAL_ORGANISM_PREFIX)
    if variant not in REAL_VARIANTS:
        raise ModelSpecError(
            f"real organism spec {spec!r}: unknown variant {variant!r}"
            f"{did_you_mean(variant, REAL_VARIANTS)}; known: {', '.join(REAL_VARIANTS)}"
        )
    return real_checkpoint_path(variant)


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
                f"organism spec {spec!r}: unknown organism variant {variant!r}"
                f"{did_you_mean(variant, VARIANTS)}; known: {', '.join(VARIANTS)}"
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
    may point at code shipped with it (``auto_map``). Sharded safetensors weights
    (``model.safetensors.index.json`` and the ``model-0000x-of-0000y.safetensors`` it names) need
    a well-formed index whose every shard is a file of the directory.

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
    if _SAFETENSORS not in files and _SAFETENSORS_INDEX in files:
        _check_shards(path)  # what transformers reads when there is no model.safetensors
    elif not any(n.endswith(".safetensors") for n in files):
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


def _check_shards(path: Path) -> None:
    """Refuse a sharded safetensors checkpoint whose index is malformed, names a shard outside the
    directory, or names shards the directory lacks (a tensor left out of the index is found when
    the weights are loaded: it is missing from the model)."""
    index_path = path / _SAFETENSORS_INDEX
    weight_map = _json_object(index_path).get("weight_map")
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(shard, str) for shard in weight_map.values())
    ):
        raise ModelSpecError(
            f"{index_path}: not a sharded checkpoint index: expected a non-empty 'weight_map' "
            "object from tensor names to shard file names"
        )
    shards = sorted(set(weight_map.values()))
    outside = [s for s in shards if Path(s).name != s or s in ("", ".", "..")]
    if outside:
        raise ModelSpecError(
            f"{index_path}: refused: shard names that are not files of the checkpoint "
            f"directory: {', '.join(map(repr, outside[:5]))}"
        )
    missing = [s for s in shards if not (path / s).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise ModelSpecError(
            f"{path}: {len(missing)} of the {len(shards)} weight shards that "
            f"{_SAFETENSORS_INDEX} names are missing: {shown}; download the whole checkpoint"
        )


def has_chat_template(path: Path) -> bool:
    """Whether the tokenizer saved in checkpoint directory ``path`` has a chat template, read from
    its files as transformers reads them (``chat_template`` in ``tokenizer_config.json``,
    ``chat_template.jinja``, ``chat_template.json``, ``additional_chat_templates/``) without
    loading it."""
    if any((path / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    extra = path / "additional_chat_templates"
    if extra.is_dir() and any(extra.glob("*.jinja")):
        return True
    config = path / "tokenizer_config.json"
    return config.is_file() and bool(_json_object(config).get("chat_template"))


def check_prompt_format(spec: str, prompt_format: str, *, trust_remote_code: bool = False) -> None:
    """Refuse prompt format ``chat`` for a checkpoint whose tokenizer has no chat template
    (`has_chat_template`), without loading it.

    Endpoint and organism specs (resolving one may build the zoo), and checkpoints trusted to run
    their own code (whose tokenizer may bring its template), are left to loading, which refuses
    the same (`unlearncheck.backends.hf.resolve_prompt_format`).

    Raises:
        ModelSpecError: If ``chat`` is asked of a checkpoint without a chat template.
    """
    if prompt_format != "chat" or trust_remote_code:
        return
    if spec.startswith((ENDPOINT_PREFIX, ORGANISM_PREFIX, REAL_ORGANISM_PREFIX)):
        # resolving an organism builds it
        return
    path = resolve_spec(spec)
    if not has_chat_template(path):
        raise ModelSpecError(
            f"{path}: prompt format 'chat' renders prompts with the tokenizer's chat template, "
            "and this tokenizer has none (no chat_template in tokenizer_config.json, no "
            "chat_template.jinja); use prompt format 'plain' (or 'auto': chat only where there "
            "is a template)"
        )


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a missing or malformed file is a `ModelSpecError`."""
    if not path.is_file():
        raise ModelSpecError(f"{path}: no such file: not a transformers checkpoint directory")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # not UTF-8, not JSON, a huge number, too deep
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
        ValueError: If torch knows no such device, or it is ``meta`` (no data), or it is a CUDA
            device this machine lacks, or
            it is `SPREAD` and the accelerate package is missing.
    """
    import torch

    if device == SPREAD and not _has_accelerate():
        raise ValueError(
            f"device {SPREAD!r} spreads the model over the visible GPUs with transformers' "
            "device_map='auto', which needs the accelerate package (pip install accelerate, or "
            "the multi-gpu extra); or name one device (cuda, cuda:1, cpu)"
        )
    if device is None or device == SPREAD:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r}: {err}") from err
    if target.type == "meta":
        raise ValueError(
            f"device {device!r} holds no data (shapes only), so no model can be scored on it; "
            "name a device that computes (cpu, cuda, cuda:1)"
        )
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (target.index or 0) >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    return target


def _has_accelerate() -> bool:
    """Whether the accelerate package (transformers' ``device_map``) is installed."""
    from importlib.util import find_spec

    return find_spec("accelerate") is not None

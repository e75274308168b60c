"""Resolution of model specs (organism names, local directories, cached hub ids) to paths."""

from __future__ import annotations

from pathlib import Path

ORGANISM_PREFIX = "organism:"


class ModelSpecError(ValueError):
    """A model spec could not be resolved to a local checkpoint."""


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


def _resolve_organism(spec: str) -> Path:
    """Resolve an ``organism:<variant>[@seed=<n>]`` spec (see `resolve_spec`)."""
    variant, sep, option = spec.removeprefix(ORGANISM_PREFIX).partition("@")
    seed = 0
    if sep:
        key, _, value = option.partition("=")
        if key != "seed" or not value.isdigit():
            raise ModelSpecError(f"malformed organism spec {spec!r}: expected '@seed=<n>'")
        seed = int(value)
    if not variant:
        raise ModelSpecError(f"malformed organism spec {spec!r}: missing variant name")
    from unlearncheck.organism import checkpoint_path

    path = checkpoint_path(variant, seed=seed)
    if not path.is_dir():
        raise ModelSpecError(
            f"organism spec {spec!r} resolves to {path}, which does not exist; build the "
            "organism zoo first"
        )
    return path

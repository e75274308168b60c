"""A checkpoint whose tensors do not match its config is refused, naming the tensors: never
loaded with random weights in place of a missing tensor, never silently cut to fewer layers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from unlearncheck.backends.hf import HFModel
from unlearncheck.specs import ModelSpecError


def _copy(checkpoint: Path, to: Path) -> Path:
    shutil.copytree(checkpoint, to)
    return to


def test_the_intact_checkpoint_loads(tiny_checkpoint: Path) -> None:
    assert HFModel.load(str(tiny_checkpoint)).model.config.n_layer == 2


def test_a_missing_tensor_is_refused_by_name(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = _copy(tiny_checkpoint, tmp_path / "no_embedding")
    weights = broken / "model.safetensors"
    tensors = load_file(weights)
    del tensors["transformer.wpe.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(
        ModelSpecError, match=r"missing from the checkpoint.*transformer\.wpe\.weight"
    ):
        HFModel.load(str(broken))


def test_a_config_with_fewer_layers_than_the_weights_is_refused(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cut = _copy(tiny_checkpoint, tmp_path / "one_layer")
    config = json.loads((cut / "config.json").read_text())
    config["n_layer"] = 1
    (cut / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSpecError, match=r"not in the model config\.json describes.*h\.1\."):
        HFModel.load(str(cut))


def test_a_tensor_of_another_shape_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    wide = _copy(tiny_checkpoint, tmp_path / "wide")
    config = json.loads((wide / "config.json").read_text())
    config["n_positions"] = 128  # the checkpoint's position embedding has 64 rows
    (wide / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSpecError, match=r"do not match config\.json"):
        HFModel.load(str(wide))

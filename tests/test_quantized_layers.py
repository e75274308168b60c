"""4-bit codes of real bitsandbytes layers, and the reload of a checkpoint with them, on the CPU.

On CUDA the 4-bit attacks reload the checkpoint with ``load_in_4bit``: transformers swaps every
``nn.Linear``/``Conv1D`` but the head for a ``bnb.nn.Linear4bit`` whose weight is a packed
``Params4bit`` (uint8, [n / 2, 1]) with a ``quant_state``. bitsandbytes does the same on the CPU
(``device_map="cpu"``), so these tests load real packed layers without a GPU.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, cast

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

from unlearncheck import quantization
from unlearncheck.attacks.model import _changed_codes, _quantized_variant, _reload_options
from unlearncheck.backends.hf import HFModel

KINDS = ("nf4", "fp4")


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny GPT-2 (``Conv1D`` layers) and a tiny Llama (``nn.Linear`` layers)."""
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        llama = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny_llama")
    llama.save_pretrained(path)
    return {"gpt2": tiny_checkpoint, "llama": path}


def load_4bit(path: Path, kind: str) -> Any:
    """The checkpoint at ``path`` with real bitsandbytes 4-bit layers, on the CPU."""
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=torch.float32
    )
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map="cpu")


def packed_layers(model: torch.nn.Module) -> list[Any]:
    """The model's quantized layers, checked to be real packed ``Linear4bit`` layers."""
    layers = [m for _, m in quantization.quantized_layers(model)]
    assert layers
    for layer in layers:
        assert isinstance(layer, bnb.nn.Linear4bit)
        assert layer.weight.dtype == torch.uint8 and layer.weight.shape[1] == 1
    return layers


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose first quantized layer's weight is moved by noise."""
    changed = copy.deepcopy(model)
    _, layer = next(iter(quantization.quantized_layers(changed)))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        layer.weight.add_(0.05 * torch.randn_like(layer.weight))
    return changed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_layers_have_the_codes_of_their_float_weights(
    checkpoints: dict[str, Path], arch: str, kind: str
) -> None:
    float_model = AutoModelForCausalLM.from_pretrained(checkpoints[arch])
    packed = load_4bit(checkpoints[arch], kind)
    packed_layers(packed)
    k = cast(Any, kind)
    assert quantization.changed_code_fraction(packed, float_model, k) == 0.0
    assert quantization.changed_code_fraction(float_model, packed, k) == 0.0
    assert quantization.changed_code_fraction(packed, packed, k) == 0.0
    # The variant the CPU path derives (quantize → dequantize) has the codes of the packed one.
    dequantized = quantization.quantize_model_(copy.deepcopy(float_model), k)
    assert quantization.changed_code_fraction(dequantized, packed, k) == 0.0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_changed_weight_changes_the_codes_of_its_packed_layer(
    checkpoints: dict[str, Path], arch: str, tmp_path: Path
) -> None:
    original = AutoModelForCausalLM.from_pretrained(checkpoints[arch])
    changed = perturbed(original)
    changed.save_pretrained(tmp_path)
    packed_changed = load_4bit(tmp_path, "nf4")
    packed_original = load_4bit(checkpoints[arch], "nf4")
    expected = quantization.changed_code_fraction(changed, original)
    assert expected > 0.0
    assert quantization.changed_code_fraction(packed_changed, original) == expected
    assert quantization.changed_code_fraction(changed, packed_original) == expected
    assert quantization.changed_code_fraction(packed_changed, packed_original) == expected


def test_codes_of_layers_repacked_for_the_cpu_are_read_too(checkpoints: dict[str, Path]) -> None:
    # Linear4bit.forward repacks its weight so on a CPU with AVX512-BF16 (this one may lack it);
    # the repacking needs whole blocks per row, which the Llama's layers have.
    original = AutoModelForCausalLM.from_pretrained(checkpoints["llama"])
    packed = load_4bit(checkpoints["llama"], "nf4")
    for layer in packed_layers(packed):
        data, state = bnbf._convert_weight_packed_for_cpu(
            layer.weight.data, layer.weight.quant_state
        )
        layer.weight.data, layer.weight.quant_state = data, state
        assert state.packing_format_for_cpu
    assert quantization.changed_code_fraction(packed, original) == 0.0
    changed = perturbed(original)
    expected = quantization.changed_code_fraction(changed, original)
    assert quantization.changed_code_fraction(changed, packed) == expected > 0.0


def test_codes_of_another_quant_type_are_not_compared(checkpoints: dict[str, Path]) -> None:
    original = AutoModelForCausalLM.from_pretrained(checkpoints["gpt2"])
    packed = load_4bit(checkpoints["gpt2"], "nf4")
    with pytest.raises(ValueError, match="quantized to nf4, not fp4"):
        quantization.changed_code_fraction(packed, original, "fp4")


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_the_cuda_reload_keeps_the_models_device_dtype_and_pickle_choice(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_pickle: bool
) -> None:
    """The CUDA branch of `_quantized_variant`, with the device faked as ``cuda:1`` and
    ``from_pretrained`` run for real on the CPU with the arguments it was given (but the device)."""
    path = tiny_checkpoint
    if allow_pickle:  # a checkpoint with pickle weights only
        path = tmp_path / "pickle"
        shutil.copytree(tiny_checkpoint, path)
        (path / "model.safetensors").unlink()
        model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    model = HFModel.load(str(path), device="cpu", allow_pickle=allow_pickle)
    model.device = torch.device("cuda", 1)
    real = transformers.AutoModelForCausalLM.from_pretrained
    calls: list[dict[str, Any]] = []

    def from_pretrained(source: Path, **options: Any) -> Any:
        calls.append(options)
        return real(source, **{**options, "device_map": "cpu"})

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    variant = _quantized_variant(model, "nf4")

    (options,) = calls
    assert options["device_map"] == {"": torch.device("cuda", 1)}
    assert options["use_safetensors"] is (None if allow_pickle else True)
    assert options["dtype"] == model.model.dtype
    assert options["quantization_config"].load_in_4bit
    assert options["quantization_config"].bnb_4bit_quant_type == "nf4"
    assert variant.spec == f"{path}|nf4"
    assert variant.tokenizer is model.tokenizer
    assert variant.prompt_format == model.prompt_format
    packed_layers(variant.model)
    evidence = _changed_codes("nf4")(variant, model, cast(Any, None), cast(Any, None))
    assert evidence == {"changed_4bit_codes": 0.0}


@pytest.mark.parametrize(
    ("loaded_on", "device", "device_map"),
    [
        ("cuda:1", torch.device("cuda", 1), {"": torch.device("cuda", 1)}),
        ("cuda", torch.device("cuda"), {"": torch.device("cuda", 3)}),
        ("auto", torch.device("cuda", 0), "auto"),
    ],
)
def test_the_cuda_reload_goes_where_the_model_was_loaded(
    tiny_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    loaded_on: str,
    device: torch.device,
    device_map: object,
) -> None:
    model = HFModel.load(str(tiny_checkpoint), device="cpu", trust_remote_code=True)
    model.load_options["device"] = loaded_on
    model.device = device
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    options = _reload_options(model, "int8")
    assert options["device_map"] == device_map
    assert options["trust_remote_code"] is True
    assert options["quantization_config"].load_in_8bit

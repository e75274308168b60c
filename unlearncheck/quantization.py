"""Weight quantization with bitsandbytes on the CPU: quantize → dequantize, 4-bit codes, cells.

The layers quantized are the ones ``BitsAndBytesConfig`` quantizes when transformers loads a model:
every ``nn.Linear`` and GPT-2 ``Conv1D`` except the output head. Weights are quantized in the
``nn.Linear`` layout ([out, in], row-major blocks of 64), as bitsandbytes stores them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from functools import cache
from types import ModuleType
from typing import Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = [
    "QuantKind",
    "changed_code_fraction",
    "nf4_cell_projector",
    "quantize_model_",
    "quantized_layers",
]


QuantKind = Literal["nf4", "fp4", "int8"]
_BLOCK_SIZE = 64
_SKIPPED_MODULES = ("lm_head",)


@cache
def _bnbf() -> ModuleType:
    """``bitsandbytes.functional``, imported on first use (it takes seconds to import, and most
    runs quantize nothing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import bitsandbytes.functional

    return bitsandbytes.functional


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The (name, module) pairs whose weights bitsandbytes quantizes."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | Conv1D) and name.split(".")[-1] not in _SKIPPED_MODULES:
            yield name, module


def _linear_layout(module: nn.Module) -> torch.Tensor:
    weight: torch.Tensor = module.weight.data  # type: ignore[union-attr,assignment]
    return weight.t() if isinstance(module, Conv1D) else weight


def _set_linear_layout(module: nn.Module, value: torch.Tensor) -> None:
    target: torch.Tensor = module.weight.data  # type: ignore[union-attr,assignment]
    target.copy_(value.t() if isinstance(module, Conv1D) else value)


def _quantize_dequantize(weight: torch.Tensor, kind: QuantKind) -> torch.Tensor:
    """``weight`` ([out, in]) after a round trip through the bitsandbytes quantizer ``kind``."""
    w = weight.detach().float().contiguous()
    if kind == "int8":
        codes, scales, _ = _bnbf().int8_vectorwise_quant(w)
        return (codes.float() * scales.float()[:, None] / 127.0).to(weight.dtype)
    packed, state = _bnbf().quantize_4bit(w, blocksize=_BLOCK_SIZE, quant_type=kind)
    return _bnbf().dequantize_4bit(packed, state).to(weight.dtype)


def quantize_model_(model: nn.Module, kind: QuantKind) -> nn.Module:
    """Replace every quantized layer's weight by its quantize → dequantize image (in place)."""
    with torch.no_grad():
        for _, module in quantized_layers(model):
            _set_linear_layout(module, _quantize_dequantize(_linear_layout(module), kind))
    return model


def _four_bit_codes(weight: torch.Tensor, kind: Literal["nf4", "fp4"] = "nf4") -> torch.Tensor:
    """The 4-bit code of every element of ``weight`` ([out, in]), flattened, as int64."""
    packed, _ = _bnbf().quantize_4bit(
        weight.detach().float().contiguous(), blocksize=_BLOCK_SIZE, quant_type=kind
    )
    flat = packed.flatten()
    return torch.stack([flat >> 4, flat & 15], dim=1).flatten()[: weight.numel()].long()


def changed_code_fraction(
    model: nn.Module, original: nn.Module, kind: Literal["nf4", "fp4"] = "nf4"
) -> float:
    """Fraction of 4-bit codes that differ between Q(model) and Q(original), no forward pass."""
    theirs = dict(quantized_layers(original))
    changed = total = 0
    for name, module in quantized_layers(model):
        a = _four_bit_codes(_linear_layout(module), kind)
        b = _four_bit_codes(_linear_layout(theirs[name]), kind)
        changed += int((a != b).sum())
        total += a.numel()
    return changed / total if total else 0.0


def nf4_cell_projector(
    model: nn.Module, original: nn.Module, margin: float = 0.1
) -> Callable[[], None]:
    """A function that clamps ``model``'s quantized weights into ``original``'s nf4 cells.

    After projection every weight keeps the nf4 code it has in ``original`` and every block keeps
    its absmax, so nf4 quantization maps ``model`` exactly onto Q(``original``). Cells are shrunk
    by ``margin`` of their width on each side.
    """
    values = _bnbf().get_4bit_type("nf4", device="cpu").float()
    edges = torch.cat([values[:1], (values[1:] + values[:-1]) / 2, values[-1:]])
    lower, upper = edges[:-1], edges[1:]
    width = upper - lower
    lower, upper = lower + margin * width, upper - margin * width
    theirs = dict(quantized_layers(original))
    bounds: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    for name, module in quantized_layers(model):
        ref = _linear_layout(theirs[name]).float().contiguous()
        codes = _four_bit_codes(ref)
        flat = ref.flatten()
        n_blocks = (flat.numel() + _BLOCK_SIZE - 1) // _BLOCK_SIZE
        padded = torch.zeros(n_blocks * _BLOCK_SIZE)
        padded[: flat.numel()] = flat
        blocks = padded.view(n_blocks, _BLOCK_SIZE).abs()
        absmax = blocks.max(dim=1).values.repeat_interleave(_BLOCK_SIZE)[: flat.numel()]
        lo, hi = lower[codes] * absmax, upper[codes] * absmax
        pinned = flat.abs() == absmax  # the element that defines its block's absmax stays put
        lo = torch.where(pinned, flat, lo).view_as(ref)
        hi = torch.where(pinned, flat, hi).view_as(ref)
        bounds.append((module, lo, hi))

    def project() -> None:
        for module, lo, hi in bounds:
            _set_linear_layout(module, torch.clamp(_linear_layout(module), lo, hi))

    return project

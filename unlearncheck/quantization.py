"""Weight quantization with bitsandbytes on the CPU: quantize → dequantize, 4-bit codes, cells.

The layers quantized are the ones ``BitsAndBytesConfig`` quantizes when transformers loads a model:
every ``nn.Linear`` and GPT-2 ``Conv1D`` except the output head. Weights are quantized in the
``nn.Linear`` layout ([out, in], row-major blocks of 64), as bitsandbytes stores them. A layer that
is already quantized (a ``bnb.nn.Linear4bit`` of a model loaded with ``load_in_4bit``, as the 4-bit
attacks load one on CUDA) is read as it is: its packed codes, not a float weight.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterator
from functools import cache
from types import ModuleType
from typing import Any, Literal

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


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` 4-bit codes of bitsandbytes' packed bytes (two per byte, high nibble
    first), flattened, as uint8."""
    flat = packed.contiguous().view(torch.uint8).flatten()
    return torch.stack([flat >> 4, flat & 15], dim=1).flatten()[:n]


def _four_bit_codes(
    weight: torch.Tensor, kind: Literal["nf4", "fp4"] = "nf4", blocksize: int = _BLOCK_SIZE
) -> torch.Tensor:
    """The 4-bit code of every element of ``weight`` ([out, in]), flattened, as int64."""
    packed, _ = _bnbf().quantize_4bit(
        weight.detach().float().contiguous(), blocksize=blocksize, quant_type=kind
    )
    return _unpack(packed, weight.numel()).long()


def _packed_weight(module: nn.Module) -> Any | None:
    """``module``'s weight when it is an already quantized bitsandbytes ``Params4bit`` (that of a
    ``bnb.nn.Linear4bit`` on its device), else None (a float weight)."""
    bnb = sys.modules.get("bitsandbytes")  # a model with such layers has imported it
    weight = getattr(module, "weight", None)
    if bnb is None or not isinstance(weight, bnb.nn.Params4bit):
        return None
    return weight if weight.bnb_quantized and weight.quant_state is not None else None


def _packed_codes(weight: Any) -> torch.Tensor:
    """The 4-bit codes of a quantized ``Params4bit``, flattened in the [out, in] layout, uint8.

    Besides bitsandbytes' packing (``_unpack``), reads the one ``Linear4bit.forward`` switches a
    layer to on a CPU with AVX512-BF16 (``packing_format_for_cpu``): [out, in / 2] bytes, each
    run of 32 holding the low (first 32) and high (last 32) nibbles of a 32-row × 2-column tile.
    """
    state = weight.quant_state
    if not getattr(state, "packing_format_for_cpu", False):
        return _unpack(weight.data, math.prod(state.shape))
    rows, cols = state.shape
    runs = weight.data.view(torch.uint8).reshape(-1, 32)
    tiles = torch.cat([runs & 15, runs >> 4], dim=1)
    return tiles.reshape(rows // 32, cols // 2, 32, 2).transpose(1, 2).flatten()


def _blocksize(name: str, kind: str, packed: list[Any]) -> int:
    """The block size the 4-bit codes of layer ``name`` are compared at: that of its already
    quantized weights (``packed``), else `_BLOCK_SIZE`.

    Raises:
        ValueError: If a packed weight's quant type is not ``kind``, or two have different block
            sizes.
    """
    sizes = set()
    for weight in packed:
        if weight.quant_state.quant_type != kind:
            raise ValueError(
                f"layer {name} is quantized to {weight.quant_state.quant_type}, not {kind}: "
                "its codes cannot be compared"
            )
        sizes.add(int(weight.quant_state.blocksize))
    if len(sizes) > 1:
        raise ValueError(f"layer {name} is quantized in blocks of {sorted(sizes)} in the models")
    return sizes.pop() if sizes else _BLOCK_SIZE


def _layer_codes(
    module: nn.Module, packed: Any | None, kind: Literal["nf4", "fp4"], blocksize: int
) -> tuple[tuple[int, ...], torch.Tensor]:
    """The [out, in] shape of a layer's weight and its 4-bit codes (uint8, flattened): read from
    its packed weight, or quantized from its float weight."""
    if packed is not None:
        return tuple(packed.quant_state.shape), _packed_codes(packed)
    weight = _linear_layout(module)
    return tuple(weight.shape), _four_bit_codes(weight, kind, blocksize).to(torch.uint8)


def changed_code_fraction(
    model: nn.Module, original: nn.Module, kind: Literal["nf4", "fp4"] = "nf4"
) -> float:
    """Fraction of 4-bit codes that differ between Q(model) and Q(original), no forward pass.

    A layer of either model is float (``nn.Linear`` or ``Conv1D``: quantized here) or already
    quantized (``bnb.nn.Linear4bit``: its packed codes are read); float layers are quantized at
    the packed layer's block size, so the same weights give the same codes either way. The fp4
    codes of +0 and -0 count as one.

    Raises:
        ValueError: If an already quantized layer is not of quant type ``kind``, the two models
            quantize a layer in blocks of different sizes, or a layer's shape differs.
    """
    theirs = dict(quantized_layers(original))
    changed = total = 0
    for name, module in quantized_layers(model):
        other = theirs[name]
        packed = [_packed_weight(module), _packed_weight(other)]
        blocksize = _blocksize(name, kind, [w for w in packed if w is not None])
        shape, a = _layer_codes(module, packed[0], kind, blocksize)
        other_shape, b = _layer_codes(other, packed[1], kind, blocksize)
        if shape != other_shape:
            raise ValueError(
                f"layer {name} is {list(shape)} in the model, {list(other_shape)} in the original"
            )
        if kind == "fp4":  # codes 0 and 8 are +0 and -0: one value, which requantizing keeps as 0
            a, b = a.masked_fill(a == 8, 0), b.masked_fill(b == 8, 0)
        changed += int((a != b.to(a.device)).sum())
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

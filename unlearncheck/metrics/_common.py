"""Shared helpers of the metrics modules: array types and argument checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["Bools", "Floats", "k_count", "nonempty", "to_numpy"]

#: Numbers given as a sequence or a 1-D numpy array.
Floats = Sequence[float] | np.ndarray
#: Booleans given as a sequence or a 1-D numpy array.
Bools = Sequence[bool] | np.ndarray


def nonempty(values: Floats | Bools, what: str) -> np.ndarray:
    """``values`` as a float array; ValueError unless it is non-empty and 1-D."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence")
    return array


def k_count(n: int, k: float) -> int:
    """How many of ``n`` tokens the lowest ``k`` share is (at least 1)."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    return max(1, int(k * n))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 numpy array on the host."""
    return tensor.double().cpu().numpy()

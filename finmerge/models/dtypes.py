"""Tensor element types without torch: what the merge's planning, reading and writing need to know.

``import torch`` takes about a second (1.0–1.1 s here), as long as a 0.4B linear merge's whole pass. The
merge reads, combines (numba kernels on the raw bits) and writes tensors as numpy arrays, so it describes
their types itself: the safetensors code, torch's name, the width, and the numpy integer type that carries
the bits. Torch is imported only where a torch path runs (:func:`to_torch`, :attr:`DType.torch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # torch's name: bfloat16, float32, int64, ...
    st: str  # the safetensors code: BF16, F32, I64, ...
    itemsize: int
    is_floating_point: bool

    @property
    def bits(self) -> type:
        """The numpy type whose values are this type's bits (signed, as torch's integer views are)."""
        if self.st == "BOOL":
            return np.bool_
        return {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}[self.itemsize]

    @property
    def torch(self):
        import torch

        return getattr(torch, self.name)

    def __str__(self) -> str:
        return self.name


_ALL = [
    DType("float64", "F64", 8, True),
    DType("float32", "F32", 4, True),
    DType("float16", "F16", 2, True),
    DType("bfloat16", "BF16", 2, True),
    DType("float8_e4m3fn", "F8_E4M3", 1, True),
    DType("float8_e5m2", "F8_E5M2", 1, True),
    DType("int64", "I64", 8, False),
    DType("int32", "I32", 4, False),
    DType("int16", "I16", 2, False),
    DType("int8", "I8", 1, False),
    DType("uint8", "U8", 1, False),
    DType("uint16", "U16", 2, False),
    DType("uint32", "U32", 4, False),
    DType("uint64", "U64", 8, False),
    DType("bool", "BOOL", 1, False),
]
BY_ST: dict[str, DType] = {d.st: d for d in _ALL}
BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}
FLOAT32, FLOAT64 = BY_NAME["float32"], BY_NAME["float64"]
# the output dtypes a merge may ask for by name (``merge.dtype``)
OUTPUT = {n: BY_NAME[n] for n in ("float32", "bfloat16", "float16")}


def of(dtype: Any) -> DType:
    """A :class:`DType` from itself, torch's dtype object or its name (``torch.bfloat16``, ``"bfloat16"``)."""
    if isinstance(dtype, DType):
        return dtype
    name = str(dtype).removeprefix("torch.")
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unsupported tensor dtype {dtype!r}") from None


def nbytes(dtype: Any, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ``dtype`` (anything :func:`of` takes) and ``shape``."""
    return math.prod(shape) * of(dtype).itemsize


def to_torch(a: np.ndarray, dtype: DType):
    """The torch tensor of type ``dtype`` over the bits array ``a`` (no copy)."""
    import torch

    t = torch.from_numpy(a)
    return t if t.dtype == dtype.torch else t.view(dtype.torch)


def to_bits(t) -> np.ndarray:
    """The bits of a contiguous torch tensor as a numpy array of its shape (no copy): :func:`to_torch` undone."""
    import torch

    return t.view(getattr(torch, np.dtype(of(t.dtype).bits).name)).numpy()  # torch names numpy's types alike

"""Element types without torch (finmerge/models/dtypes.py), and the safetensors reader that hands tensors to
the merge as numpy arrays of their bits: every dtype the format names reads back as torch reads it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from finmerge.models import dtypes
from finmerge.models.safetensors_stream import SafetensorsModel

TORCH_TYPES = [
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
    torch.bool,
]  # fmt: skip


@pytest.mark.parametrize("t", TORCH_TYPES, ids=str)
def test_each_dtype_matches_torch_and_round_trips_through_its_bits(t):
    dt = dtypes.of(t)
    assert dtypes.of(dt) is dt and dtypes.of(dt.name) is dt and dtypes.of(str(t)) is dt
    assert dt.torch is t and dt.itemsize == torch.empty((), dtype=t).element_size()
    assert dt.is_floating_point == t.is_floating_point
    x = torch.arange(12).reshape(3, 4).to(t) if t != torch.bool else torch.arange(12).reshape(3, 4) % 3 == 0
    bits = dtypes.to_bits(x)
    assert bits.dtype == dt.bits and bits.shape == (3, 4)
    back = dtypes.to_torch(bits, dt)
    assert back.dtype == t and torch.equal(back.view(torch.uint8), x.view(torch.uint8))
    assert dtypes.nbytes(t, (3, 4)) == 12 * dt.itemsize


def test_an_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported tensor dtype 'complex64'"):
        dtypes.of("complex64")
    with pytest.raises(ValueError, match="unsupported tensor dtype"):
        dtypes.of(torch.complex64)


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "pread"])
def test_the_reader_gives_every_tensor_as_its_bits(tmp_path, mapped):
    """Whole tensors (0-d included) and row ranges, mapped or read with ``pread`` where a file cannot be
    mapped: the bytes safetensors itself reads, typed by :attr:`DType.bits`."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w_bf16": torch.randn(7, 5, generator=g).bfloat16(),
        "w_fp16": torch.randn(4, 3, generator=g).half(),
        "w_fp32": torch.randn(6, generator=g),
        "scale": torch.tensor(0.25, dtype=torch.bfloat16),  # 0-d
        "ids": torch.arange(10, dtype=torch.int64).reshape(2, 5),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 4, dtype=torch.bfloat16),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with SafetensorsModel(tmp_path) as m:
        if not mapped:
            m._unmappable.add(tmp_path / "model.safetensors")
        for name, t in tensors.items():
            dt = m.tensors[name].dt
            assert dt.torch is t.dtype
            whole = m.rows(name, None, None, lambda t=t, dt=dt: np.empty(t.shape, dt.bits))
            assert whole.dtype == dt.bits and torch.equal(dtypes.to_torch(whole, dt), t)
            if t.dim() and t.shape[0] > 1:
                part = m.rows(name, 1, 2, lambda t=t, dt=dt: np.empty((1, *t.shape[1:]), dt.bits))
                assert torch.equal(dtypes.to_torch(part, dt), t[1:2])

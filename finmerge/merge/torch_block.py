"""The torch path of the streaming pass: one candidate's output block by the method's torch code, with the
checks that name a non-finite input and its rows.

Taken by whatever the kernels do not cover (fp64, slerp, small models, a block with a non-finite value);
:mod:`finmerge.merge.stream` imports it, and with it torch, only when a block needs it.
"""

from __future__ import annotations

import math

import torch

from finmerge.merge.methods import Scratch, max_abs_diff
from finmerge.merge.plan import TensorPlan
from finmerge.merge.triplet import MergeError
from finmerge.models import dtypes


def _check_finite(t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise MergeError(f"{what}: {n_nan} NaN and {n_inf} Inf value(s)")


def _max_abs(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> float:
    """max |x − y| (NaN when either holds a NaN, or both an Inf), using ``out`` as scratch."""
    if x.numel() == 0:
        return 0.0
    torch.sub(x, y, out=out)
    return float(out.abs_().max())


def _diagnose(name: str, a, b, xf: dict, yf: torch.Tensor, models: dict) -> None:
    rows = "" if a is None else f" (rows {a}:{b})"
    for r, v in xf.items():
        _check_finite(v, f"input {r} tensor {name}{rows} in {models[r].tensors[name].file}")
    _check_finite(yf, f"output tensor {name}{rows}")
    raise MergeError(f"tensor {name}{rows}: non-finite |Δ| between finite output and inputs")


def torch_block(plan: TensorPlan, name, a, b, in_shared, x, ws: Scratch, tag: str, compute_dtype, models):
    """One candidate's output block on the torch path; ``(y, max|y−θ_cpt|, max|y−θ_inst| or None)``.
    ``tag`` names this candidate's buffers (the writer may still be writing the previous block from them);
    ``x`` holds torch tensors."""
    kind, out_dtype, compute_dtype = plan.kind, plan.dtype.torch, dtypes.of(compute_dtype).torch
    roles = tuple(x)
    bshape = x["domain"].shape
    whole = in_shared and plan.whole_tensor
    if whole and plan.method.raw_inputs:
        # ties / dare on the raw inputs: converted chunk by chunk inside, never as whole fp32 copies
        acc = plan.method.combine(name, plan.params, x, ws.get(f"acc{tag}", bshape, compute_dtype), ws)
        y = acc if out_dtype == compute_dtype else ws.get(f"y{tag}", bshape, out_dtype).copy_(acc)
        dc = max_abs_diff(acc, x["domain"], ws)
        di = max_abs_diff(acc, x["instruct"], ws)
        if not (math.isfinite(dc) and math.isfinite(di)) or not bool(torch.isfinite(acc).all()):
            _diagnose(name, a, b, {r: v.to(compute_dtype) for r, v in x.items()}, acc, models)
        if y is not acc and not bool(torch.isfinite(y).all()):  # finite, but beyond the output dtype's range
            _diagnose(name, a, b, {r: v.to(compute_dtype) for r, v in x.items()}, y.to(compute_dtype), models)
        return y, dc, di
    xf = {
        r: v if v.dtype == compute_dtype else ws.get(f"x_{r}", v.shape, compute_dtype).copy_(v)
        for r, v in x.items()
    }
    if kind == "taken" or not in_shared:
        src = x[plan.source] if kind == "taken" and in_shared else x["domain"]
        y = src if src.dtype == out_dtype else ws.get(f"y{tag}", bshape, out_dtype).copy_(src)
    else:
        acc = plan.method.combine(name, plan.params, xf, ws.get(f"acc{tag}", bshape, compute_dtype), ws)
        y = acc if out_dtype == compute_dtype else ws.get(f"y{tag}", bshape, out_dtype).copy_(acc)
    # t0 / t1 are the method's delta buffers, free again once the block is combined
    yf = y if y.dtype == compute_dtype else ws.get("t0", bshape, compute_dtype).copy_(y)
    # Non-finite values in the output or in an input it is compared with show up as a
    # non-finite |Δ|; the base is checked apart (it may take no part in either).
    diff = ws.get("t1", bshape, compute_dtype)
    dc = _max_abs(yf, xf["domain"], diff)
    di = _max_abs(yf, xf["instruct"], diff) if in_shared else 0.0
    idle = [r for r in roles if r == "base" and not plan.uses_base]
    if not (math.isfinite(dc) and math.isfinite(di)) or any(
        not bool(torch.isfinite(xf[r]).all()) for r in idle
    ):
        _diagnose(name, a, b, xf, yf, models)
    return y, dc, (di if in_shared else None)

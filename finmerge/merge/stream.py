"""The streaming pass: execute a per-tensor plan block by block, checking values, into a sharded writer.

Tensors are read in row blocks from the memory-mapped safetensors inputs, upcast to the compute dtype,
combined by their method (:mod:`finmerge.merge.method_registry`) and rounded once to the output dtype, so
peak memory is a few row blocks (``block_elems``), independent of model and tensor size; whole-tensor
methods (ties, dare, slerp) see all shared rows of a tensor at once.
"""

from __future__ import annotations

import math

import torch

from finmerge.merge.method_registry import ROLES
from finmerge.merge.methods import Scratch, max_abs_diff
from finmerge.merge.plan import TensorPlan
from finmerge.merge.triplet import Triplet
from finmerge.models.safetensors_stream import ShardedWriter


class MergeError(ValueError):
    """A problem found while merging (non-finite values, integer tensors that differ); nothing is committed."""


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


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


def _read(model, name: str, a, b, ws: Scratch, key: str) -> torch.Tensor:
    """Rows [a, b) of ``name`` into a reused buffer (whole 0-d / 1-row tensors through safetensors)."""
    info = model.tensors[name]
    dtype = info.torch_dtype
    if a is None or not info.shape or dtype is None or info.offset < 0:
        return model.read(name, a, b)
    return model.read_into(name, a, b, ws.get(key, (b - a, *info.shape[1:]), dtype))


def merge_pass(
    tri: Triplet, plans: dict[str, TensorPlan], writer: ShardedWriter, compute_dtype, block_elems: int
) -> list[dict]:
    """Write every planned tensor (in the writer's order); the per-tensor rows of ``merge_report.json``."""
    models = {r: getattr(tri, r).weights for r in ROLES}
    ws = Scratch()
    k = 0
    report = []
    for m in models.values():
        m.__enter__()
    try:
        for name in writer.order:
            plan = plans[name]
            kind, shape, out_dtype = plan.kind, plan.shape, plan.dtype
            shared = plan.shared_rows
            rows = shape[0] if shape else None
            d_cpt, d_inst = 0.0, None
            for a, b, in_shared in plan.blocks(block_elems):
                roles = ROLES if in_shared else ("domain",)
                k += 1
                par = k % 2  # buffers the writer may still be writing from alternate between blocks
                # Raw blocks may go to the writer as they are (copied / taken tensors, domain-only rows), so
                # they alternate too; a whole-tensor block is never written raw and gets one buffer set.
                whole = in_shared and plan.whole_tensor
                x = {r: _read(models[r], name, a, b, ws, f"raw_{r}{'' if whole else par}") for r in roles}
                if kind == "copied":
                    for r in ("base", "domain"):
                        if not torch.equal(x[r], x["instruct"]):
                            raise MergeError(f"non-float tensor {name} differs between instruct and {r}")
                    writer.write(name, x["instruct"])
                    d_inst = 0.0
                    continue
                bshape = x["domain"].shape
                if whole and plan.method.raw_inputs:
                    # ties / dare on the raw inputs: converted chunk by chunk inside, never as whole fp32 copies
                    acc = plan.method.combine(
                        name, plan.params, x, ws.get(f"acc{par}", bshape, compute_dtype), ws
                    )
                    y = acc if out_dtype == compute_dtype else ws.get(f"y{par}", bshape, out_dtype).copy_(acc)
                    dc = max_abs_diff(acc, x["domain"], ws)
                    di = max_abs_diff(acc, x["instruct"], ws)
                    if not (math.isfinite(dc) and math.isfinite(di)) or not bool(torch.isfinite(acc).all()):
                        _diagnose(name, a, b, {r: v.to(compute_dtype) for r, v in x.items()}, acc, models)
                    d_cpt, d_inst = max(d_cpt, dc), max(d_inst or 0.0, di)
                    writer.write(name, y)
                    del x, y
                    continue
                xf = {
                    r: v if v.dtype == compute_dtype else ws.get(f"x_{r}", v.shape, compute_dtype).copy_(v)
                    for r, v in x.items()
                }
                if kind == "taken" or not in_shared:
                    src = x[plan.source] if kind == "taken" and in_shared else x["domain"]
                    y = src if src.dtype == out_dtype else ws.get(f"y{par}", bshape, out_dtype).copy_(src)
                else:
                    acc = plan.method.combine(
                        name, plan.params, xf, ws.get(f"acc{par}", bshape, compute_dtype), ws
                    )
                    y = acc if out_dtype == compute_dtype else ws.get(f"y{par}", bshape, out_dtype).copy_(acc)
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
                d_cpt = max(d_cpt, dc)
                if in_shared:
                    d_inst = max(d_inst or 0.0, di)
                writer.write(name, y)
                del x, xf, y, yf
            report.append(
                {
                    "name": name,
                    "kind": kind,
                    "method": plan.method.name if kind == "merged" else plan.source,
                    "rule": plan.rule,
                    "shape": list(shape),
                    "dtype": dtype_name(out_dtype),
                    "rows_domain_only": (rows - shared) if shared is not None else 0,
                    "max_abs_delta_vs_cpt": d_cpt,
                    "max_abs_delta_vs_inst": d_inst,
                }
            )
    finally:
        for m in models.values():
            m.__exit__(None, None, None)
    return report

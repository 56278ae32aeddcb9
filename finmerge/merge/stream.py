"""The streaming pass: execute a per-tensor plan block by block, checking values, into a sharded writer.

Tensors are read in row blocks mapped from the safetensors inputs (no copy), upcast to the compute dtype,
combined by their method (:mod:`finmerge.merge.method_registry`) and rounded once to the output dtype, so
peak memory is a few row blocks (``block_elems``), independent of model and tensor size; whole-tensor
methods (ties, dare, slerp) see all shared rows of a tensor at once.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass

import numpy as np
import torch

from finmerge.merge import fused, fused_ties
from finmerge.merge.method_registry import ROLES, GeneralizedTaskArithmetic, WeightedSum
from finmerge.merge.methods import Scratch, max_abs_diff
from finmerge.merge.plan import TensorPlan
from finmerge.merge.triplet import Triplet
from finmerge.models.shard_writer import ShardedWriter


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
    """Rows [a, b) of ``name`` mapped from the page cache (``ws[key]`` the buffer where a file cannot be
    mapped). Whole 0-d / 1-row tensors go through safetensors."""
    info = model.tensors[name]
    dtype = info.torch_dtype
    if a is None or not info.shape or dtype is None or info.offset < 0:
        return model.read(name, a, b)
    return model.rows(name, a, b, lambda: ws.get(key, (b - a, *info.shape[1:]), dtype))


@dataclass
class _TensorStats:
    d_cpt: float = 0.0
    d_inst: float | None = None

    def add(self, dc: float, di: float | None) -> None:
        self.d_cpt = max(self.d_cpt, dc)
        if di is not None:
            self.d_inst = max(self.d_inst or 0.0, di)


def _torch_block(plan: TensorPlan, name, a, b, in_shared, x, ws: Scratch, tag: str, compute_dtype, models):
    """One candidate's output block on the torch path; ``(y, max|y−θ_cpt|, max|y−θ_inst| or None)``.
    ``tag`` names this candidate's buffers (the writer may still be writing the previous block from them)."""
    kind, out_dtype = plan.kind, plan.dtype
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


def _fusable(plans: list[TensorPlan], x: dict, in_shared: bool) -> bool:
    p = plans[0]
    return (
        in_shared
        and p.kind == "merged"
        and all(isinstance(q.method, WeightedSum) and _exact_f32(q.params.coeffs) for q in plans)
        and fused.available((v.dtype for v in x.values()), p.dtype)
    )


def _ties_fusable(q: TensorPlan, x: dict, whole: bool, compute_dtype) -> bool:
    """ties / dare on a whole tensor, in dtypes the kernels take (:mod:`finmerge.merge.fused_ties`)."""
    return (
        whole
        and q.kind == "merged"
        and isinstance(q.method, GeneralizedTaskArithmetic)
        and x["domain"].numel() > 0
        and fused_ties.available((v.dtype for v in x.values()), q.dtype, compute_dtype)
    )


def _exact_f32(coeffs) -> bool:
    """A nonzero coefficient that float32 rounds to zero would be left out by the kernel but kept by torch."""
    return all(c == 0.0 or np.float32(c) != 0.0 for c in coeffs)


def kernels_worth_it(plans: dict[str, TensorPlan]) -> bool:
    """Whether the pass takes the numba kernels for these tensors (:func:`fused.worth_it` of the merged
    elements: small models stay on torch, whose start costs less)."""
    return fused.worth_it(sum(math.prod(p.shape) for p in plans.values() if p.kind == "merged"))


def merge_pass(
    tri: Triplet, plans: dict[str, TensorPlan], writer: ShardedWriter, compute_dtype, block_elems: int
) -> list[dict]:
    """Write every planned tensor (in the writer's order); the per-tensor rows of ``merge_report.json``."""
    return merge_pass_many(tri, [plans], [writer], compute_dtype, block_elems)[0]


def merge_pass_many(
    tri: Triplet,
    plans: list[dict[str, TensorPlan]],
    writers: list[ShardedWriter],
    compute_dtype,
    block_elems: int,
    stats: dict | None = None,
) -> list[list[dict]]:
    """K merges of the same three models in one read of the inputs: ``plans[k]`` written to ``writers[k]``
    (same tensors, shapes and output dtypes; the coefficients and methods may differ). Linear methods take
    the fused kernel (:mod:`finmerge.merge.fused`) when the dtypes allow, ties / dare theirs
    (:mod:`finmerge.merge.fused_ties`), everything else the torch path (the same bytes either way);
    ``stats`` (if given) gets the merged elements (per candidate) that each path computed."""
    counts = stats if stats is not None else {}
    counts.update(fused_elements=0, torch_elements=0)
    models = {r: getattr(tri, r).weights for r in ROLES}
    order = writers[0].order
    if any(w.order != order for w in writers):
        raise ValueError("merge_pass_many: the outputs must hold the same tensors")
    ws = Scratch()
    kernel = ties = None
    use_fused = kernels_worth_it(plans[0])
    k_blocks = 0
    reports: list[list[dict]] = [[] for _ in plans]
    for m in models.values():
        m.__enter__()
    # Every object alive now (torch's and numba's modules: ~10^5 of them) outlives the pass, yet each full
    # collection that the pass's allocations trigger would walk them all: 4 % of a merge's CPU. Frozen, the
    # collector skips them until the pass ends (unless a caller froze them already).
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        for name in order:
            tplans = [p[name] for p in plans]
            plan = tplans[0]
            shape = plan.shape
            shared = plan.shared_rows
            rows = shape[0] if shape else None
            tstats = [_TensorStats() for _ in tplans]
            for a, b, in_shared in plan.blocks(block_elems):
                roles = ROLES if in_shared else ("domain",)
                k_blocks += 1
                par = k_blocks % 2  # buffers the writers may still be writing from alternate between blocks
                # Raw blocks may go to the writers as they are (copied / taken tensors, domain-only rows), so
                # they alternate too; a whole-tensor block is never written raw and gets one buffer set.
                whole = in_shared and plan.whole_tensor
                x = {r: _read(models[r], name, a, b, ws, f"raw_{r}{'' if whole else par}") for r in roles}
                if plan.kind == "copied":
                    for r in ("base", "domain"):
                        if not torch.equal(x[r], x["instruct"]):
                            raise MergeError(f"non-float tensor {name} differs between instruct and {r}")
                    for w, st in zip(writers, tstats, strict=True):
                        w.write(name, x["instruct"])
                        st.add(0.0, 0.0)
                    continue
                if use_fused and _fusable(tplans, x, in_shared):
                    kernel = kernel or fused.FusedWeightedSums()
                    bshape = x["domain"].shape
                    n = x["domain"].numel()
                    out = ws.get(f"fused{par}", (len(tplans), n), plan.dtype)
                    diag = kernel(x, [q.params.coeffs for q in tplans], fused.bits(out))
                    if diag is not None:
                        for k, (w, st) in enumerate(zip(writers, tstats, strict=True)):
                            w.write(name, out[k].view(bshape))
                            st.add(*diag[k])
                        counts["fused_elements"] += n
                        continue
                    # a non-finite value: the torch path names the input and rows (and raises)
                all_fused = True
                for k, (q, w, st) in enumerate(zip(tplans, writers, tstats, strict=True)):
                    tag = f"{k}_{par}"
                    res = None
                    if use_fused and _ties_fusable(q, x, whole, compute_dtype):
                        ties = ties or fused_ties.FusedTies()
                        res = ties(name, q.params, x, q.dtype, ws, tag)  # None: a non-finite value
                    if res is None:
                        all_fused = False
                        res = _torch_block(q, name, a, b, in_shared, x, ws, tag, compute_dtype, models)
                    y, dc, di = res
                    w.write(name, y)
                    st.add(dc, di)
                if in_shared and plan.kind == "merged":
                    counts["fused_elements" if all_fused else "torch_elements"] += x["domain"].numel()
                del x
            for q, st, report in zip(tplans, tstats, reports, strict=True):
                report.append(
                    {
                        "name": name,
                        "kind": q.kind,
                        "method": q.method.name if q.kind == "merged" else q.source,
                        "rule": q.rule,
                        "shape": list(shape),
                        "dtype": dtype_name(q.dtype),
                        "rows_domain_only": (rows - shared) if shared is not None else 0,
                        "max_abs_delta_vs_cpt": st.d_cpt,
                        "max_abs_delta_vs_inst": st.d_inst,
                    }
                )
    finally:
        if freeze:
            gc.unfreeze()
        for k in (kernel, ties):
            if k is not None:
                k.close()
        for m in models.values():
            m.__exit__(None, None, None)
    return reports

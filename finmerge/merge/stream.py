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
from functools import partial

import numpy as np

from finmerge.merge import fused
from finmerge.merge.method_registry import ROLES, GeneralizedTaskArithmetic, WeightedSum
from finmerge.merge.plan import TensorPlan
from finmerge.merge.triplet import MergeError, Triplet
from finmerge.models import dtypes
from finmerge.models.shard_writer import ShardedWriter

__all__ = ["MergeError", "dtype_name", "kernels_worth_it", "merge_pass", "merge_pass_many"]


def dtype_name(dt) -> str:
    return dtypes.of(dt).name


class Buffers:
    """Named numpy buffers reused from block to block: a fresh large allocation is page-faulted on every use,
    which costs more than the arithmetic (the torch path has its own, :class:`~finmerge.merge.methods.Scratch`)."""

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.dtype != dtype or buf.size < n:
            buf = self._bufs[key] = np.empty(max(n, 1), dtype=dtype)
        return buf[:n].reshape(shape)


def _read(model, name: str, a, b, bufs: Buffers, key: str) -> np.ndarray:
    """Rows [a, b) of ``name`` (all of a 0-d tensor) as its bits, mapped from the page cache (``bufs[key]``
    the buffer where a file cannot be mapped)."""
    info = model.tensors[name]
    shape = info.shape if a is None else (b - a, *info.shape[1:])
    return model.rows(name, a, b, lambda: bufs.get(key, shape, info.dt.bits))


def _kernel_inputs(x: dict[str, np.ndarray], types: dict) -> dict[str, np.ndarray]:
    """The blocks' bits as the kernels take them (:func:`fused.formatted`; no copy)."""
    return {r: fused.formatted(v, types[r]) for r, v in x.items()}


class _TorchPath:
    """The torch path (:mod:`finmerge.merge.torch_block`, and torch with it), loaded by the first block that
    takes it: a linear merge on the kernels never imports torch (about a second)."""

    def __init__(self) -> None:
        self.ws = None

    def inputs(self, x: dict[str, np.ndarray], types: dict) -> dict:
        from finmerge.models.dtypes import to_torch

        if self.ws is None:
            from finmerge.merge.methods import Scratch

            self.ws = Scratch()
        return {r: to_torch(v, types[r]) for r, v in x.items()}

    def block(self, plan: TensorPlan, name: str, a, b, in_shared: bool, xt: dict, tag: str, compute, models):
        """:func:`~finmerge.merge.torch_block.torch_block` with this pass's torch buffers."""
        from finmerge.merge.torch_block import torch_block

        return torch_block(plan, name, a, b, in_shared, xt, self.ws, tag, compute, models)


@dataclass
class _TensorStats:
    d_cpt: float = 0.0
    d_inst: float | None = None

    def add(self, dc: float, di: float | None) -> None:
        self.d_cpt = max(self.d_cpt, dc)
        if di is not None:
            self.d_inst = max(self.d_inst or 0.0, di)


def _fusable(plans: list[TensorPlan], types: dict, in_shared: bool) -> bool:
    p = plans[0]
    return (
        in_shared
        and p.kind == "merged"
        and all(isinstance(q.method, WeightedSum) and _exact_f32(q.params.coeffs) for q in plans)
        and fused.available(types.values(), p.dtype)
    )


def _ties_fusable(q: TensorPlan, types: dict, n: int, whole: bool, compute_dtype) -> bool:
    """ties / dare on a whole tensor, in dtypes the kernels take (:mod:`finmerge.merge.fused_ties`)."""
    if not (whole and q.kind == "merged" and isinstance(q.method, GeneralizedTaskArithmetic) and n > 0):
        return False
    from finmerge.merge import fused_ties

    return fused_ties.available(types.values(), q.dtype, compute_dtype)


def _exact_f32(coeffs) -> bool:
    """A nonzero coefficient that float32 rounds to zero would be left out by the kernel but kept by torch."""
    return all(c == 0.0 or np.float32(c) != 0.0 for c in coeffs)


def kernels_worth_it(plans: dict[str, TensorPlan]) -> bool:
    """Whether the pass takes the numba kernels for these tensors (:func:`fused.worth_it` of the merged
    elements: small models stay on torch, see :data:`fused.MIN_ELEMENTS`)."""
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
    memory=None,
) -> list[list[dict]]:
    """K merges of the same three models in one read of the inputs: ``plans[k]`` written to ``writers[k]``
    (same tensors, shapes and output dtypes; the coefficients and methods may differ). Linear methods take
    the fused kernel (:mod:`finmerge.merge.fused`) when the dtypes allow, ties / dare theirs
    (:mod:`finmerge.merge.fused_ties`), everything else the torch path (the same bytes either way);
    ``stats`` (if given) gets the merged elements (per candidate) that each path computed; ``memory``: a
    :class:`~finmerge.merge.decision_memory.DecisionMemory` for ties' and dare's decisions."""
    counts = stats if stats is not None else {}
    counts.update(fused_elements=0, torch_elements=0)
    models = {r: getattr(tri, r).weights for r in ROLES}
    order = writers[0].order
    if any(w.order != order for w in writers):
        raise ValueError("merge_pass_many: the outputs must hold the same tensors")
    bufs, torch_path = Buffers(), _TorchPath()
    kernel = ties = None
    use_fused = kernels_worth_it(plans[0])
    k_blocks = 0
    reports: list[list[dict]] = [[] for _ in plans]
    for m in models.values():
        m.__enter__()
    # Every object alive now (the imported modules' ~10^5 of them) outlives the pass, yet each full
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
                types = {r: models[r].tensors[name].dt for r in roles}
                k_blocks += 1
                par = k_blocks % 2  # buffers the writers may still be writing from alternate between blocks
                # Raw blocks may go to the writers as they are (copied / taken tensors, domain-only rows), so
                # they alternate too; a whole-tensor block is never written raw and gets one buffer set.
                whole = in_shared and plan.whole_tensor
                x = {r: _read(models[r], name, a, b, bufs, f"raw_{r}{'' if whole else par}") for r in roles}
                n = x["domain"].size
                if plan.kind == "copied":
                    for r in ("base", "domain"):
                        if not np.array_equal(x[r], x["instruct"]):
                            raise MergeError(f"non-float tensor {name} differs between instruct and {r}")
                    for w, st in zip(writers, tstats, strict=True):
                        w.write(name, x["instruct"])
                        st.add(0.0, 0.0)
                    continue
                if use_fused and _fusable(tplans, types, in_shared):
                    kernel = kernel or fused.FusedWeightedSums()
                    bshape = x["domain"].shape
                    out = bufs.get(f"fused{par}", (len(tplans), n), fused.format_bits(plan.dtype))
                    diag = kernel(_kernel_inputs(x, types), [q.params.coeffs for q in tplans], out)
                    if diag is not None:
                        for k, (w, st) in enumerate(zip(writers, tstats, strict=True)):
                            w.write(name, out[k].reshape(bshape))
                            st.add(*diag[k])
                        counts["fused_elements"] += n
                        continue
                    # a non-finite value: the torch path names the input and rows (and raises)
                xb = xt = (
                    None  # the inputs as the kernels / torch take them, made when a candidate needs them
                )
                all_fused = True
                for k, (q, w, st) in enumerate(zip(tplans, writers, tstats, strict=True)):
                    tag = f"{k}_{par}"
                    written = 0
                    if use_fused and _ties_fusable(q, types, n, whole, compute_dtype):
                        if ties is None:
                            from finmerge.merge.fused_ties import FusedTies

                            ties = FusedTies(memory=memory)
                        xb = xb or _kernel_inputs(x, types)
                        # written block by block as merged; None: a value not finite
                        res = ties(name, q.params, xb, q.dtype, bufs, tag, partial(w.write, name))
                        if res is not None:
                            st.add(*res)
                            continue
                        written = ties.written
                    all_fused = False
                    if xt is None:
                        xt = torch_path.inputs(x, types)
                    # the torch path: what the kernels do not take, or a value not finite (which it names, and
                    # raises; were it to return, its first `written` elements would be the kernels' bytes)
                    y, dc, di = torch_path.block(q, name, a, b, in_shared, xt, tag, compute_dtype, models)
                    w.write(name, y.reshape(-1)[written:] if written else y)
                    st.add(dc, di)
                if in_shared and plan.kind == "merged":
                    counts["fused_elements" if all_fused else "torch_elements"] += n
                del x, xb, xt
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

"""The merge arithmetic for one tensor (or one row block), in float32, with mergekit 0.1.5 semantics.

Each function takes the base tensor and the fine-tuned tensors already upcast, and returns the merged
tensor in the compute dtype; the caller streams tensors, checks values and rounds once to the output dtype.

* ``generalized_task_arithmetic`` covers ties, dare_ties and dare_linear (and task_arithmetic with
  sparsification off): sparsify each task vector, weight it, optionally keep only the entries whose sign
  agrees with the weighted sum's sign, optionally divide by the weights that took part, scale by λ.
* ``slerp_tensor``: spherical interpolation of whole tensors, linear where they are (anti)parallel.
* ``weighted_sum``: task_arithmetic and linear, ``Σ c_k·θ_k`` over the inputs' upcast row blocks.

Magnitude top-k, the L1 rescale and slerp's angle are global over a tensor, so these methods take whole
tensors (memory: a few times the largest tensor); task_arithmetic and linear stream row blocks. Which method
uses which function, with which parameters, is declared in :mod:`finmerge.merge.method_registry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from finmerge.merge.method_registry import CHUNK, Sparsify, tensor_seed  # noqa: F401 (tensor_seed: callers')


@dataclass(frozen=True)
class VectorSpec:
    """One task vector's part in a generalized task-arithmetic merge."""

    weight: float
    density: float = 1.0


class Scratch:
    """Named buffers reused from block to block and tensor to tensor: a fresh large allocation is
    page-faulted on every use, which costs more than the arithmetic."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, key: str, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(max(n, 1), dtype=dtype)
        return buf[:n].view(shape)


@dataclass
class Kept:
    """Which entries of one task vector survive sparsification, decided once for the whole tensor."""

    threshold: float | None = None  # magnitude: keep |d| > threshold, plus the first ties_quota equal to it
    ties_quota: int = 0
    seed: int | None = None  # random: per-chunk PCG64 streams seeded from (seed, chunk index)
    mask: torch.Tensor | None = None  # random, when already drawn (for the L1 rescale): 0/1 in bfloat16
    density: float = 1.0
    scale: float = 1.0  # L1 rescale factor


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield start, min(n, start + CHUNK)


def _delta(
    x: torch.Tensor, base: torch.Tensor, a: int, b: int, out: torch.Tensor, cb: torch.Tensor
) -> torch.Tensor:
    """(x − base)[a:b] in float32, from inputs in any float dtype (converted chunk by chunk, in cache)."""
    if x.dtype == out.dtype and base.dtype == out.dtype:
        return torch.sub(x[a:b], base[a:b], out=out)
    out.copy_(x[a:b])
    return out.sub_(cb.copy_(base[a:b]))


# Elementwise steps below use arithmetic (hardshrink, sign, ceil, clamp) instead of masked_fill / where /
# bool masks: on CPU those are 10-40x slower per element in torch 2.13.
def _apply_kept(
    d: torch.Tensor, kept: Kept, start: int, scratch: torch.Tensor, remaining: list[int]
) -> torch.Tensor:
    """Zero the dropped entries of chunk ``d`` (flat, from element ``start``; chunks visited in order) in place.
    ``remaining``: ties at the magnitude threshold still to keep in this pass (lowest indices first)."""
    if kept.threshold is not None:
        full = torch.nn.functional.hardshrink(d, kept.threshold)  # keeps |d| > threshold
        if remaining[0] > 0:
            ties = torch.nonzero(torch.abs(d, out=scratch) == kept.threshold).flatten()[: remaining[0]]
            full[ties] = d[ties]
            remaining[0] -= ties.numel()
        d.copy_(full)
    elif kept.mask is not None:
        d.mul_(scratch.copy_(kept.mask[start : start + d.numel()]))
    elif kept.seed is not None:
        d.mul_(_random_keep(kept, start, d.numel(), scratch))
    return d


def _random_keep(kept: Kept, start: int, m: int, out: torch.Tensor) -> torch.Tensor:
    """1 where the chunk's 16-bit uniform draw is below density·2¹⁶, else 0 (density resolution 2⁻¹⁶).

    Raw PCG64 words, four draws each, seeded by (seed, chunk index): about 4× faster than ``torch.rand``,
    which was most of dare's cost, and the same values on any machine and thread count."""
    bits = np.random.PCG64((kept.seed, start // CHUNK)).random_raw((m + 3) // 4)
    keep = np.less(bits.view(np.uint16)[:m], round(kept.density * 65536))
    out.numpy()[...] = keep
    return out


def _kth_smallest(values: np.ndarray, k: int) -> np.float32:
    """The k-th smallest (1-based) of a float32 array: the value ``torch.kthvalue`` returns, selected by
    ``np.partition`` (about 2.3× faster on CPU; a copy, the input is left as it is)."""
    return np.partition(values, k - 1)[k - 1]


def _magnitude_decide(flat_x, flat_b, density: float, cb, d_buf) -> Kept:
    """Threshold and tie quota of the top ``max(1, int(density·n))`` |entries|, exactly as many as mergekit
    keeps. A sample of |x − base| brackets the threshold; one chunked pass counts the entries above the
    bracket and collects those inside it (a small share), where the exact k-th value is selected. The
    comparisons and selections run in numpy, which is several times faster than torch's boolean masks on
    CPU; both are exact, so the threshold is the same."""
    n = flat_b.numel()
    k = max(1, int(density * n))
    if n > 1 << 20:
        g = torch.Generator().manual_seed(n)
        idx = torch.randint(n, (1 << 18,), generator=g)
        sample = (flat_x[idx].float() - flat_b[idx].float()).abs_().numpy()
        m, q = sample.size, 1.0 - k / n
        lo = _kth_smallest(sample, max(1, int((q - 0.01) * m)))
        hi = _kth_smallest(sample, min(m, int((q + 0.01) * m) + 1))
        above, parts = 0, []
        for a, b in _chunks(n):
            w = _delta(flat_x, flat_b, a, b, d_buf[: b - a], cb[: b - a]).abs_().numpy()
            above += int(np.count_nonzero(w > hi))
            parts.append(w[(w >= lo) & (w <= hi)])
        inside = np.concatenate(parts)
        need = k - above
        if 0 < need <= inside.size:
            thr = _kth_smallest(inside, inside.size - need + 1)
            n_gt = above + int(np.count_nonzero(inside > thr))
            return Kept(threshold=float(thr), ties_quota=k - n_gt, density=density)
    w = torch.empty(n)  # small tensor, or the sample missed: select on the whole vector
    for a, b in _chunks(n):
        _delta(flat_x, flat_b, a, b, w[a:b], cb[: b - a]).abs_()
    thr = _kth_smallest(w.numpy(), n - k + 1)
    return Kept(threshold=float(thr), ties_quota=k - int(np.count_nonzero(w.numpy() > thr)), density=density)


def decide_kept(
    base: torch.Tensor,
    x: torch.Tensor,
    density: float,
    method: Sparsify,
    rescale: bool,
    seed: int,
    mask_buffer: torch.Tensor | None = None,
) -> Kept:
    """The sparsification of task vector ``x − base``: global decisions (top-k threshold, L1 rescale)."""
    if method is None or density >= 1:
        return Kept()
    flat_b, flat_x = base.reshape(-1), x.reshape(-1)
    n = flat_b.numel()
    cb, tmp, d_buf = (torch.empty(min(CHUNK, n)) for _ in range(3))
    if method == "magnitude":
        kept = _magnitude_decide(flat_x, flat_b, density, cb, d_buf)
    else:
        kept = Kept(seed=seed, density=density)
    if rescale:
        before = after = 0.0
        remaining = [kept.ties_quota]
        draw = method == "random"
        if draw:  # keep the draws for the combination pass instead of drawing twice
            kept.mask = mask_buffer if mask_buffer is not None else torch.empty(n, dtype=torch.bfloat16)
        for a, b in _chunks(n):
            d = _delta(flat_x, flat_b, a, b, d_buf[: b - a], cb[: b - a])
            before += float(d.abs().sum(dtype=torch.float64))
            if draw:
                keep = _random_keep(kept, a, b - a, tmp[: b - a])
                kept.mask[a:b].copy_(keep)
                d.mul_(keep)
            else:
                _apply_kept(d, kept, a, tmp[: b - a], remaining)
            after += float(d.abs().sum(dtype=torch.float64))
        if before >= 1e-7 and after >= 1e-7:
            kept.scale = before / after
    return kept


def generalized_task_arithmetic(
    base: torch.Tensor,
    tuned: list[torch.Tensor],
    specs: list[VectorSpec],
    *,
    sparsification: Sparsify,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    lambda_scale: float = 1.0,
    seeds: list[int] | None = None,
    scratch: Scratch | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """base + λ·(Σ wᵢ·mᵢ·sparse(θᵢ − base)) / (Σ wᵢ·mᵢ if normalize), mᵢ the sign-agreement mask.

    Two phases: the global sparsification decisions per vector (chunked passes; dare keeps its draws in a
    bfloat16 0/1 buffer for the rescale), then the
    elementwise combination chunk by chunk in cache. Inputs may be in any float dtype (converted per chunk)
    and are not modified; ``out`` is float32. The values are mergekit's (same operations per element).
    """
    ws = scratch or Scratch()
    seeds = seeds or [0] * len(tuned)
    n = base.numel()
    kept = [
        decide_kept(
            base, x, spec.density, sparsification, rescale, seed, ws.get(f"mask{i}", (n,), torch.bfloat16)
        )
        for i, (x, spec, seed) in enumerate(zip(tuned, specs, seeds, strict=True))
    ]
    remaining = [[k.ties_quota] for k in kept]
    out = out if out is not None else torch.empty_like(base)
    flat_b, flat_out = base.reshape(-1), out.reshape(-1)
    flats = [x.reshape(-1) for x in tuned]
    c = min(CHUNK, n)
    tmp = ws.get("c_tmp", (c,))
    cb = ws.get("c_base", (c,))
    ds = [ws.get(f"c_d{i}", (c,)) for i in range(len(tuned))]
    total = sum(s.weight for s in specs)
    for a, b in _chunks(n):
        m = b - a
        deltas = []
        for i, (x, spec, k) in enumerate(zip(flats, specs, kept, strict=True)):
            d = _delta(x, flat_b, a, b, ds[i][:m], cb[:m])
            _apply_kept(d, k, a, tmp[:m], remaining[i])
            if k.scale != 1.0:
                d.mul_(k.scale)
            deltas.append(d.mul_(spec.weight))
        mixed = flat_out[a:b]
        if consensus:
            if len(deltas) == 2:
                torch.add(deltas[0], deltas[1], out=mixed)
            else:
                torch.sum(torch.stack(deltas), 0, out=mixed)  # Tensor.sum takes no out=
            # pos = 1 where the weighted sum is >= 0 (majority sign +), else 0
            pos = torch.sign(mixed, out=ws.get("c_pos", (c,))[:m]).add_(1).clamp_(max=1)
            divisor = tmp[:m].zero_()
            mixed.zero_()
            for d, spec in zip(deltas, specs, strict=True):
                # d where sign(d) equals the majority sign, else 0 (zeros never agree):
                # min(d, 0) + pos·|d| is d (d>0, pos 1), 0 (d>0, pos 0), 0 (d<0, pos 1), d (d<0, pos 0)
                agreed = torch.clamp(d, max=0).addcmul_(pos, d.abs())
                mixed.add_(agreed)
                divisor.add_(agreed.sign_().abs_(), alpha=spec.weight)  # the weight where it agreed
            divisor.add_(torch.sign(divisor).abs_().neg_().add_(1))  # 0 → 1, as mergekit does
        else:
            mixed.copy_(deltas[0])
            for d in deltas[1:]:
                mixed.add_(d)
            divisor = 1.0 if abs(total) < 1e-8 else total
        if normalize:
            mixed.div_(divisor)
        if lambda_scale != 1.0:
            mixed.mul_(lambda_scale)
        mixed.add_(flat_b[a:b] if flat_b.dtype == mixed.dtype else cb[:m].copy_(flat_b[a:b]))
    return out


def weighted_sum(terms: list[tuple[torch.Tensor, float]], acc: torch.Tensor) -> torch.Tensor:
    """``Σ c·x`` over ``(x, c)`` terms into ``acc``, terms with ``c = 0`` left out and ``c = 1`` copied, so
    that weights such as (0, 1, 0) give an input bit for bit (the difference form would not, in fp32)."""
    terms = [(x, c) for x, c in terms if c != 0.0]
    if not terms:
        return acc.zero_()
    for j, (x, c) in enumerate(terms):
        if j == 0:
            torch.mul(x, c, out=acc) if c != 1.0 else acc.copy_(x)
        else:
            acc.add_(x, alpha=c)
    return acc


def max_abs_diff(y: torch.Tensor, x: torch.Tensor, scratch: Scratch) -> float:
    """max |y − x| with ``y`` float32 and ``x`` in any float dtype, chunk by chunk (NaN propagates)."""
    fy, fx = y.reshape(-1), x.reshape(-1)
    n, worst = fy.numel(), 0.0
    if n == 0:
        return 0.0
    buf = scratch.get("c_diff", (min(CHUNK, n),))
    for a, b in _chunks(n):
        m = float(buf[: b - a].copy_(fx[a:b]).sub_(fy[a:b]).abs_().max())
        if m != m:  # NaN
            return m
        worst = max(worst, m)
    return worst


def sparsify(
    delta: torch.Tensor, density: float, method: Sparsify, rescale: bool, seed: int = 0
) -> torch.Tensor:
    """One task vector sparsified (a new tensor): what generalized_task_arithmetic does to each vector."""
    zero = torch.zeros_like(delta)
    kept = decide_kept(zero, delta, density, method, rescale, seed)
    flat = delta.clone().reshape(-1)
    tmp = torch.empty(min(CHUNK, flat.numel()))
    remaining = [kept.ties_quota]
    for a, b in _chunks(flat.numel()):
        _apply_kept(flat[a:b], kept, a, tmp[: b - a], remaining)
    return flat.mul_(kept.scale).view(delta.shape)


def slerp_tensor(
    t: float, a: torch.Tensor, b: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8
):
    """Spherical interpolation of tensor ``a`` towards ``b`` (t=0 gives ``a``), each taken as one vector;
    linear when they are (anti)parallel. mergekit 0.1.5 batches tensors on a leading axis and interpolates
    per batch entry, i.e. per tensor, too."""
    shape = a.shape
    x = a.reshape(1, -1)
    y = b.reshape(x.shape)
    if x.shape[1] == 0:
        return ((1 - t) * x + t * y).reshape(shape)
    na = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    nb = torch.linalg.vector_norm(y, dim=1, keepdim=True)
    na = torch.where(na > eps, na, 1.0)
    nb = torch.where(nb > eps, nb, 1.0)
    dot = ((x / na) * (y / nb)).sum(dim=1, keepdim=True).clamp(-1, 1)
    linear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear, 0.0, dot))
    sin_theta = torch.sin(theta)
    ca = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    cb = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    return (ca * x + cb * y).reshape(shape)

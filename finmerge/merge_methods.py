"""The merge arithmetic for one tensor (or one row block), in float32, with mergekit 0.1.5 semantics.

Each function takes the base tensor and the fine-tuned tensors already upcast, and returns the merged
tensor in the compute dtype; the caller streams tensors, checks values and rounds once to the output dtype.

* ``generalized_task_arithmetic`` covers ties, dare_ties and dare_linear (and task_arithmetic with
  sparsification off): sparsify each task vector, weight it, optionally keep only the entries whose sign
  agrees with the weighted sum's sign, optionally divide by the weights that took part, scale by λ.
* ``slerp_tensor``: spherical interpolation of whole tensors, linear where they are (anti)parallel.

Magnitude top-k, the L1 rescale and slerp's angle are global over a tensor, so these methods take whole
tensors (memory: a few times the largest tensor); task_arithmetic and linear stream row blocks.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import torch

Sparsify = Literal["magnitude", "random"] | None

# method → (sparsification, sign consensus, default normalize, default rescale)
METHODS: dict[str, tuple[Sparsify, bool, bool, bool]] = {
    "task_arithmetic": (None, False, False, False),
    "ties": ("magnitude", True, True, False),
    "dare_ties": ("random", True, False, True),
    "dare_linear": ("random", False, False, True),
}
WHOLE_TENSOR = {"ties", "dare_ties", "dare_linear", "slerp"}


@dataclass(frozen=True)
class VectorSpec:
    """One task vector's part in a generalized task-arithmetic merge."""

    weight: float
    density: float = 1.0


def tensor_generator(seed: int, name: str, role: str) -> torch.Generator:
    """A generator per (seed, tensor, model): the same draws whatever order tensors are merged in."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(f"{name}\0{role}".encode())) % 2**63)


def kth_largest(w: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of a flat tensor, exactly, in about two passes over it.

    A sample brackets the answer, the elements inside the bracket (a small fraction) are selected exactly;
    the full ``kthvalue`` (several passes, about 10× slower on big tensors) is the fallback.
    """
    n = w.numel()
    if n <= 1 << 20:
        return torch.kthvalue(w, n - k + 1).values
    g = torch.Generator().manual_seed(n)
    sample = w[torch.randint(n, (1 << 18,), generator=g)]
    q = 1.0 - k / n
    margin = 0.01
    lo = torch.quantile(sample, max(0.0, q - margin))
    hi = torch.quantile(sample, min(1.0, q + margin))
    above = int((w > hi).sum())
    inside = w[(w >= lo) & (w <= hi)]
    need = k - above  # rank, from the top, of the answer among the bracketed elements
    if 0 < need <= inside.numel():
        return torch.kthvalue(inside, inside.numel() - need + 1).values
    return torch.kthvalue(w, n - k + 1).values


class Scratch:
    """Full-tensor fp32 buffers reused from tensor to tensor: a fresh multi-hundred-MB allocation is
    page-faulted on every use, which costs more than the arithmetic (see tasks/merge.py's _Workspace)."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, key: str, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = 1
        for d in shape:
            n *= d
        buf = self._bufs.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(max(n, 1), dtype=dtype)
        return buf[:n].view(shape)


def magnitude_mask(w: torch.Tensor, density: float) -> torch.Tensor:
    """Given ``w`` = |task vector|, keep exactly ``max(1, int(density·n))`` entries of largest value (ties at
    the threshold: lowest index first), as mergekit's magnitude sparsification keeps its top-k."""
    n = w.numel()
    if density >= 1 or n == 0:
        return torch.ones_like(w, dtype=torch.bool)
    k = max(1, int(density * n))
    flat = w.reshape(-1)
    thr = kth_largest(flat, k)
    mask = flat > thr
    need = k - int(mask.sum())
    if need > 0:
        ties = torch.nonzero(flat == thr).flatten()[:need]
        mask[ties] = True
    return mask.view(w.shape)


def random_mask(
    shape, density: float, generator: torch.Generator, u: torch.Tensor | None = None
) -> torch.Tensor:
    if u is None:
        u = torch.empty(shape)
    return torch.rand(shape, generator=generator, out=u) < density


def sparsify(
    delta: torch.Tensor,
    density: float,
    method: Sparsify,
    rescale: bool,
    generator: torch.Generator | None,
    w: torch.Tensor | None = None,
) -> torch.Tensor:
    """Drop entries of a task vector in place; with ``rescale`` match the kept entries' L1 norm to the
    original's. ``w``: a scratch tensor of the same shape."""
    if method is None or density >= 1:
        return delta
    w = torch.abs(delta, out=w) if w is not None else delta.abs()
    before = w.sum() if rescale else None
    if method == "magnitude":
        mask = magnitude_mask(w, density)
    else:
        assert generator is not None
        mask = random_mask(delta.shape, density, generator, w)
    delta.mul_(mask)
    if rescale:
        after = torch.abs(delta, out=w).sum()
        if before >= 1e-7 and after >= 1e-7:
            delta.mul_(before / after)
    return delta


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
    generators: list[torch.Generator | None] | None = None,
    scratch: Scratch | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """base + λ·(Σ wᵢ·mᵢ·sparse(θᵢ − base)) / (Σ wᵢ·mᵢ if normalize), mᵢ the sign-agreement mask.

    Inputs are not modified; the operations and their order are mergekit's, done in place in ``scratch``
    buffers (keys ``t0``… and ``mask…``), so the values are the same and memory stays a few tensors.
    """
    ws = scratch or Scratch()
    gens = generators or [None] * len(tuned)
    shape = base.shape
    w = ws.get("t_abs", shape)
    deltas = []
    for i, (x, spec, gen) in enumerate(zip(tuned, specs, gens, strict=True)):
        d = torch.sub(x, base, out=ws.get(f"t{i}", shape))
        sparsify(d, spec.density, sparsification, rescale, gen, w)
        deltas.append(d.mul_(spec.weight))
    mixed = out if out is not None else torch.empty_like(base)
    if consensus:
        torch.add(deltas[0], deltas[1], out=mixed) if len(deltas) == 2 else torch.stack(deltas).sum(
            0, out=mixed
        )
        positive = torch.ge(mixed, 0, out=ws.get("mask_major", shape, torch.bool))
        divisor = ws.get("t_abs", shape).zero_()  # w is free again
        mixed.zero_()
        agree = ws.get("mask_agree", shape, torch.bool)
        for d, spec in zip(deltas, specs, strict=True):
            torch.where(positive, d > 0, d < 0, out=agree)  # sign(d) == majority sign (zeros never agree)
            mixed.addcmul_(d, agree)
            divisor.add_(agree, alpha=spec.weight)
        divisor.masked_fill_(divisor == 0, 1.0)
    else:
        mixed.copy_(deltas[0])
        for d in deltas[1:]:
            mixed.add_(d)
        total = sum(s.weight for s in specs)
        divisor = torch.tensor(1.0 if abs(total) < 1e-8 else total, dtype=base.dtype)
    if normalize:
        mixed.div_(divisor)
    if lambda_scale != 1.0:
        mixed.mul_(lambda_scale)
    return mixed.add_(base)


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

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


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep exactly ``max(1, int(density·n))`` entries of largest |value| (ties at the threshold: lowest
    index first), as mergekit's magnitude sparsification keeps its top-k."""
    n = delta.numel()
    if density >= 1 or n == 0:
        return torch.ones_like(delta, dtype=torch.bool)
    k = max(1, int(density * n))
    w = delta.abs().reshape(-1)
    thr = kth_largest(w, k)
    mask = w > thr
    need = k - int(mask.sum())
    if need > 0:
        ties = torch.nonzero(w == thr).flatten()[:need]
        mask[ties] = True
    return mask.view(delta.shape)


def random_mask(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    return torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density


def sparsify(
    delta: torch.Tensor, density: float, method: Sparsify, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Drop entries of a task vector; with ``rescale`` match the kept entries' L1 norm to the original's."""
    if method is None or density >= 1:
        return delta
    if method == "magnitude":
        mask = magnitude_mask(delta, density)
    else:
        assert generator is not None
        mask = random_mask(delta, density, generator)
    kept = delta * mask
    if rescale:
        before, after = delta.abs().sum(), kept.abs().sum()
        if before >= 1e-7 and after >= 1e-7:
            kept.mul_(before / after)
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
    generators: list[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """base + λ·(Σ wᵢ·mᵢ·sparse(θᵢ − base)) / (Σ wᵢ·mᵢ if normalize), mᵢ the sign-agreement mask."""
    gens = generators or [None] * len(tuned)
    mixed = torch.zeros_like(base)
    weighted = []
    for x, spec, gen in zip(tuned, specs, gens, strict=True):
        delta = sparsify(x - base, spec.density, sparsification, rescale, gen)
        weighted.append(delta.mul_(spec.weight))
    if consensus:
        majority = torch.zeros_like(base)
        for d in weighted:
            majority.add_(d)
        majority = torch.where(majority >= 0, 1.0, -1.0)
        divisor = torch.zeros_like(base)
        for d, spec in zip(weighted, specs, strict=True):
            agree = torch.sign(d) == majority
            mixed.add_(d * agree)
            divisor.add_(agree.to(base.dtype), alpha=spec.weight)
        divisor[divisor == 0] = 1.0
    else:
        for d in weighted:
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

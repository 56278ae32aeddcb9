"""ties, dare_ties and dare_linear through numba kernels: the torch path's bytes in a few passes.

The torch path (:func:`finmerge.merge.methods.generalized_task_arithmetic`, then a rounding, two max-|Δ|
reductions and a finiteness check in :mod:`finmerge.merge.stream`) makes some thirty elementwise passes per
tensor. Here each task vector's global decision takes one pass over the raw inputs, and the combination
(deltas, drop, rescale, weights, sign election, divisor, λ, + base, rounding to the output dtype, max |Δ|,
finiteness) one more, per 2,048-element tile in L1 on two threads (:mod:`finmerge.merge.fused_ties_kernel`),
handed to the writer in blocks as they are merged.

Bit-identical to the torch path, and tested so (``tests/test_ties_kernel.py``):
* magnitude top-k: the threshold is the exact k-th largest |Δ| (a sample brackets it, one pass collects the
  bracket with indices, ``np.partition`` selects: the same value any exact selection gives) and ties at the
  threshold are kept lowest index first, up to the same quota;
* dare: the same PCG64 draws per chunk (``methods._random_keep``'s numpy ``random_raw`` words, made inside the
  kernel by :mod:`finmerge.merge.pcg64`), and the L1
  norms summed by the very torch call the torch path makes (``sum(dtype=float64)`` of the same float32
  values, chunk by chunk, on the calling thread), so the rescale factor is the same double;
* the combination: the torch path's float32 operations in its order (see ``fused_ties_kernel.combine``).

Any non-finite input or result sends the tensor back to the torch path, which names the input and raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from finmerge.merge import fused
from finmerge.merge.decision_memory import VECTORS, DecisionMemory
from finmerge.merge.method_registry import CHUNK, tensor_seed
from finmerge.models import dtypes

BAND_MIN = 1 << 18  # above this many elements the top-k threshold is bracketed from a sample
SAMPLE = 1 << 14  # sample size: its quantile's error is σ ≤ 0.0039 ...
BRACKET = 0.012  # ... so ±3σ misses about once in 400 vectors (then the whole-vector selection decides)
# (Gathering a sample from a tensor not in cache costs ~10 ns a value, so a smaller sample and a wider band
# pay: 2¹⁵ and ±0.0085 took a 0.37B merge's decisions 0.86 s, this 0.78 s.)
# The combination hands its output to the writer in blocks of this many elements, two buffers in turn:
# whole tensors but for the largest (a 70B model's 1G-value embedding would take two 2 GB buffers), so that
# the writer hashing one tensor overlaps the next one's decisions (blocks of 2M values: a 0.95B ties pass
# 4.15 s instead of 3.86 s).
STREAM_BLOCK = 1 << 25
NO_MASK = np.zeros(0, np.uint8)
NO_BAND, NO_INDEX = np.zeros(0, np.uint32), np.zeros(0, np.int64)


def available(in_dtypes, out_dtype, compute_dtype) -> bool:
    """Inputs and output in bf16, fp16 or fp32 (each in its own), float32 compute; ``FINMERGE_FUSED=0`` says
    no. Dtypes as :class:`~finmerge.models.dtypes.DType` or torch's."""
    return fused.available(in_dtypes, out_dtype) and dtypes.of(compute_dtype) == dtypes.FLOAT32


@lru_cache(maxsize=1)
def _kernels():
    """Imported on first use (numba compiles once and caches the machine code on disk, like fused.py)."""
    fused.numba_target()
    from finmerge.merge import fused_ties_kernel

    return fused_ties_kernel


@dataclass
class _Vector:
    """One task vector's decisions: mode (0 whole, MAGNITUDE, MASK), threshold bits, last kept tie."""

    mode: int = 0
    thr: int = 0
    cutoff: int = -1
    mask: np.ndarray = field(default_factory=lambda: NO_MASK)
    scale: float = 1.0


class FusedTies(fused.TwoThreads):
    """Merges whole tensors for :class:`~finmerge.merge.method_registry.GeneralizedTaskArithmetic`
    methods; decisions per vector and the combination's halves run on two threads (the kernels release
    the GIL). Torch's own reductions stay on the calling thread, where the torch path runs them."""

    def __init__(self, threads: int | None = None, memory: DecisionMemory | None = None):
        super().__init__(threads)
        self.k = _kernels()
        self.memory = memory  # decisions of earlier merges of the same vectors; this one's kept for later
        self._tensor: tuple = ()  # the tensor of the decisions in _decided
        self._decided: dict = {}  # its decisions, by what they depend on
        self.written = 0  # elements of the last tensor passed to ``write`` (see __call__)

    def _map(self, fn, args: list) -> list:
        if self.pool is None or len(args) == 1:
            return [fn(*a) for a in args]
        return [f.result() for f in [self.pool.submit(fn, *a) for a in args]]

    def __call__(
        self, name: str, params, x: dict[str, np.ndarray], out_dtype, ws, tag: str, write, block=None
    ):
        """Merge one tensor: its output goes to ``write(bits)`` (flat, as the bits of ``out_dtype``,
        :func:`fused.format_bits`) in blocks of ``block`` elements (default :data:`STREAM_BLOCK`) as they are
        merged; only the decisions need the whole tensor. Returns ``(max|y−θ_cpt|, max|y−θ_inst|)``, as the torch
        path reports them, or None when a value is not finite (the caller then takes the torch path; then
        :attr:`written` says how many elements were written). ``x``: the inputs as :func:`fused.formatted`
        bits; ``ws``: reusable numpy buffers (``get(key, shape, numpy dtype)``)."""
        b, xs = x["base"].reshape(-1), [x["instruct"].reshape(-1), x["domain"].reshape(-1)]
        # The sweep's candidates in one pass differ mostly in their weights and λ, which the decisions (top-k
        # thresholds, dare's masks and rescale) do not depend on: a tensor's decisions are made once each.
        tensor = (name, b.size, *(str(a.dtype) for a in (b, *xs)), *(a.ctypes.data for a in (b, *xs)))
        if tensor != self._tensor:
            self._tensor, self._decided = tensor, {}
        key = (
            params.sparsification,
            params.density_instruct,
            params.density_domain,
            params.seed,
            params.rescale,
        )
        vecs = self._decided.get(key)
        if vecs is None:  # each set of decisions kept has mask buffers of its own (slot)
            vecs = self._decide(name, params, b, xs, ws, slot=len(self._decided))
            if vecs is None:
                return None
            self._decided[key] = vecs
        return self._combine(b, xs, vecs, params, x, out_dtype, ws, tag, write, block)

    def _decide(self, name: str, params, b, xs, ws, slot: int) -> list[_Vector] | None:
        """Each task vector's decisions (see :class:`_Vector`); None when a value is not finite."""
        densities = (params.density_instruct, params.density_domain)
        sparse = params.sparsification is not None
        magnitude = params.sparsification == "magnitude"
        vecs = [_Vector() for _ in xs]
        # what a vector's decisions depend on besides its two models (the memory's key), when it has any
        # worth remembering: the top-k threshold, the rescale factor (dare's mask is redrawn from its seed)
        remembered = sparse and (magnitude or params.rescale)
        items = [
            (name, b.size, str(b.dtype), str(x.dtype), params.sparsification, d, None if magnitude else params.seed,
             params.rescale) if remembered and d < 1 else None
            for x, d in zip(xs, densities, strict=True)
        ]  # fmt: skip
        known = [
            self.memory.get(VECTORS[i], items[i]) if self.memory and items[i] else None for i in range(2)
        ]
        if sparse and magnitude:
            todo = [i for i in range(2) if densities[i] < 1]
            for i in [i for i in todo if known[i]]:
                vecs[i] = _Vector(self.k.MAGNITUDE, known[i]["thr"], known[i]["cutoff"])
            todo = [(i,) for i in todo if not known[i]]
            if len(todo) == 2 and b.size > BAND_MIN:  # both vectors in one band pass (the base read once)
                found = self._magnitude_pair(xs, b, densities, ws)
            else:  # one vector to decide: its band pass in halves on both threads
                alone = len(todo) == 1
                found = self._map(lambda i: self._magnitude(xs[i], b, densities[i], ws, i, alone), todo)
            for (i,), got in zip(todo, found, strict=True):
                if got is None:
                    return None
                vecs[i] = _Vector(self.k.MAGNITUDE, *got)
        todo = [i for i in range(2) if sparse and densities[i] < 1]
        todo = [i for i in todo if not magnitude or (params.rescale and not known[i])]
        seeds = [tensor_seed(params.seed, name, role) for role in VECTORS]
        for i in todo:  # made here, not on the threads that fill it (Buffers.get is not thread-safe)
            if not magnitude:
                vecs[i].mode, vecs[i].mask = self.k.MASK, ws.get(f"tmask{i}.{slot}", (b.size,), np.uint8)
        chunks = -(-b.size // CHUNK)
        # One task per vector when two alike are to do; else (one vector; or a retrain's τ_fin to sum while
        # τ_inst's rescale is remembered and only its mask drawn) each in two halves of its chunks, the longest
        # tasks first, so that both threads end together. (Halves of alike vectors cost more: 5 and 6 of 11.)
        summing = [i for i in todo if params.rescale and not known[i]]
        split = self.threads > 1 and chunks > 1 and (len(todo) == 1 or len(summing) == 1)
        halves = [(0, chunks // 2), (chunks // 2, chunks)] if split else [(0, chunks)]
        tasks = [(i, r) for i in sorted(todo, key=lambda i: i not in summing) for r in halves]
        args = [(xs[i], b, densities[i], seeds[i], params, vecs[i], ws, i, not known[i], r) for i, r in tasks]
        found: dict[int, list | bool] = {}
        for (i, _), got in zip(tasks, self._map(self._second_pass, args), strict=True):
            prev = found.get(i, [])
            found[i] = False if got is False or prev is False else prev + got  # in chunk order
        for i in todo:
            sums = found[i]
            if sums is False:
                return None
            if not params.rescale or known[i]:
                continue
            before = after = 0.0
            for c, got in enumerate(sums):  # added up chunk by chunk, as the torch path does
                if got is None:  # torch's own sums, here on the calling thread
                    got = self._l1_chunk(
                        xs[i], b, densities[i], seeds[i], params, vecs[i], ws, i, c * CHUNK, exact_only=False
                    )
                before += got[0]
                after += got[1]
            if before >= 1e-7 and after >= 1e-7:
                vecs[i].scale = before / after
        for i, v in enumerate(vecs):
            if known[i] and params.rescale:
                v.scale = known[i]["scale"]
            elif items[i] and self.memory:
                self.memory.put(VECTORS[i], items[i], {"thr": v.thr, "cutoff": v.cutoff, "scale": v.scale})
        return vecs

    def _magnitude(self, xr, br, density, ws, i, halves=False):
        """(threshold bits, cutoff index) of the top ``max(1, int(density·n))`` |Δ|, or None (not finite);
        ``halves``: the band pass on both threads (the only vector deciding)."""
        n = br.size
        want = max(1, int(density * n))
        if n > BAND_MIN:
            sample = ws.get(f"tsample{i}", (SAMPLE,), np.uint32)
            self.k.sample_abs_deltas(xr, xr, br, _sample_indices(n, SAMPLE), sample, sample)
            got = self._band(xr, br, *_bracket(sample, want, n), ws, i, halves)
            if got is None:
                return None
            decided = self._from_band(*got, want)
            if decided is not None:
                return decided
        return self._whole(xr, br, want, ws, i)

    def _magnitude_pair(self, xs, br, densities, ws) -> list:
        """:meth:`_magnitude` of both vectors, sampled and banded together: one pass over the base and both
        models (in halves on both threads) instead of one per vector, each reading the base."""
        n = br.size
        wants = [max(1, int(d * n)) for d in densities]
        samples = [ws.get(f"tsample{i}", (SAMPLE,), np.uint32) for i in range(2)]
        self.k.sample_abs_deltas(xs[0], xs[1], br, _sample_indices(n, SAMPLE), *samples)
        brackets = [_bracket(s, w, n) for s, w in zip(samples, wants, strict=True)]
        lo, hi = np.array(brackets, np.uint32).T.copy()  # each vector's low ends, then high ends
        parts = self._split(n)
        cap = n // 16 + 4096
        bufs = [(ws.get(f"tbands.{h}", (2, cap), np.uint32), ws.get(f"tbandsi.{h}", (2, cap), np.int64))
                for h in range(len(parts))]  # fmt: skip
        founds = [np.zeros((2, 2), np.int64) for _ in parts]
        args = [(xs[0][s:e], xs[1][s:e], br[s:e], lo, hi, v, ix, f)
                for (s, e), (v, ix), f in zip(parts, bufs, founds, strict=True)]  # fmt: skip
        if max(self._map(self.k.magnitude_bands, args)) >= self.k.EXP:
            return [None, None]
        out = []
        for i in range(2):
            above = sum(int(f[i, 0]) for f in founds)
            decided = None
            if all(f[i, 1] >= 0 for f in founds):  # no half's band overflowed
                rows = [(v[i], ix[i], int(f[i, 1])) for (v, ix), f in zip(bufs, founds, strict=True)]
                decided = self._from_band(above, *_joined(parts, rows), wants[i])
            out.append(decided if decided is not None else self._whole(xs[i], br, wants[i], ws, i))
        return out

    def _from_band(self, above, inside, index, want):
        """(threshold bits, cutoff index) from the count above the bracket and the band (values, indices);
        None when the k-th largest is not in the band (the sample missed, or the band overflowed)."""
        need = want - above
        if not 0 < need <= inside.size:
            return None
        nb = inside.size
        thr = np.partition(inside, nb - need)[nb - need]
        quota = want - above - int(np.count_nonzero(inside > thr))
        return int(thr), int(self.k.tie_cutoff(inside, index, thr, quota))

    def _whole(self, xr, br, want, ws, i):
        """The selection on the whole vector (a small tensor, or the sample missed); None: not finite."""
        n = br.size
        w = ws.get(f"tfull{i}", (n,), np.uint32)
        if self.k.abs_deltas(xr, br, w) >= self.k.EXP:
            return None
        thr = np.partition(w, n - want)[n - want]
        quota = want - int(np.count_nonzero(w > thr))
        return int(thr), int(self.k.tie_cutoff(w, np.zeros(0, np.int64), thr, quota))

    def _band(self, xr, br, lo, hi, ws, i, halves):
        """:func:`~finmerge.merge.fused_ties_kernel.magnitude_band` of the vector (in two halves on two
        threads with ``halves``, the bands joined in index order): ``(above, band values, their indices)``;
        an empty band when it overflowed (the caller then selects on the whole vector); None: not finite."""
        n = br.size
        parts = self._split(n) if halves else [(0, n)]
        cap = n // 16 + 4096
        bufs = [(ws.get(f"tband{i}.{h}", (cap,), np.uint32), ws.get(f"tbandi{i}.{h}", (cap,), np.int64))
                for h in range(len(parts))]  # fmt: skip
        args = [(xr[s:e], br[s:e], lo, hi, v, ix) for (s, e), (v, ix) in zip(parts, bufs, strict=True)]
        found = self._map(self.k.magnitude_band, args)
        if max(bad for _, _, bad in found) >= self.k.EXP:
            return None
        above = sum(int(a) for a, _, _ in found)
        if any(nb < 0 for _, nb, _ in found):
            return above, NO_BAND, NO_INDEX
        return above, *_joined(parts, [(v, ix, nb) for (v, ix), (_, nb, _) in zip(bufs, found, strict=True)])

    def _second_pass(self, xr, br, density, seed, params, vec: _Vector, ws, i, sums_wanted, chunks):
        """dare's keep mask (the torch path's draws; ``vec.mask`` is the caller's) and, with ``rescale`` (and
        ``sums_wanted``: no remembered rescale factor), the L1 sums ``[(Σ|d|, Σ|kept d|) or None]`` (None: a
        chunk whose ``exact`` is False) of the ``chunks`` (first, end); False: not finite."""
        k = self.k
        n = br.size
        c0, c1 = chunks
        if vec.mode == k.MASK:  # these chunks' draws and sums in one kernel call
            from finmerge.merge import pcg64  # numba, loaded on first use (as _kernels)

            states = np.zeros((c1 - c0, 4), np.uint64)
            for c in range(c0, c1):  # the generators methods._random_keep seeds, one per chunk
                states[c - c0] = pcg64.seeded_state((seed, c))
            sums, exact = np.zeros((len(states), 2)), np.zeros(len(states), np.bool_)
            dthr = round(density * 65536)
            a, e = c0 * CHUNK, min(n, c1 * CHUNK)
            want = params.rescale and sums_wanted
            got = k.dare_pass(xr[a:e], br[a:e], states, CHUNK, dthr, vec.mask[a:e], want, sums, exact)
            if got >= k.EXP:
                return False
            return [(float(s[0]), float(s[1])) if e else None for s, e in zip(sums, exact, strict=True)]
        sums = []
        for a in range(c0 * CHUNK, min(n, c1 * CHUNK), CHUNK):
            got = self._l1_chunk(xr, br, density, seed, params, vec, ws, i, a, exact_only=True, h=int(c0 > 0))
            if got is False:
                return False
            sums.append(got)
        return sums

    def _l1_chunk(self, xr, br, density, seed, params, vec, ws, i, a, exact_only, h=0):
        """One chunk's L1 sums for the rescale (top-k kept vectors, and any chunk that ``exact`` cannot vouch
        for); with ``exact_only`` False the sums come from torch's own call (on the calling thread: torch's
        reduction order depends on its thread count)."""
        k = self.k
        m = min(CHUNK, br.size - a)
        rand = vec.mode == k.MASK
        draws = np.zeros(0, np.uint16)
        if rand:  # methods._random_keep's draws: PCG64 seeded by (seed, chunk index), four per word
            draws = np.random.PCG64((seed, a // CHUNK)).random_raw((m + 3) // 4).view(np.uint16)[:m]
        dthr = round(density * 65536)
        c = min(CHUNK, br.size)  # scratch of its own per half: two threads may sum one vector (_second_pass)
        absd, absk = (
            ws.get(f"tl1d{i}.{h}", (c,), np.float32)[:m],
            ws.get(f"tl1k{i}.{h}", (c,), np.float32)[:m],
        )
        mask = vec.mask[a : a + m] if rand else vec.mask
        args = (
            vec.mode,
            vec.thr,
            vec.cutoff - a,
            draws,
            dthr,
            mask,
            absd,
            absk,
            not exact_only,
        )
        bad, td, tk, exact = k.l1_chunk(xr[a : a + m], br[a : a + m], *args)
        if bad >= k.EXP:
            return False
        if exact:
            return td, tk
        if exact_only:
            return None
        import torch  # the torch path's own reduction, whose order the sums must follow (rare)

        absd_t, absk_t = torch.from_numpy(absd), torch.from_numpy(absk)
        return float(absd_t.sum(dtype=torch.float64)), float(absk_t.sum(dtype=torch.float64))

    def _combine(self, b, xs, vecs, params, x, out_dtype, ws, tag, write, block):
        k = self.k
        n = b.size
        bits = fused.format_bits(out_dtype)
        total = params.alpha + params.beta
        lin_div = 1.0 if abs(total) < 1e-8 else total
        w0, w1 = np.float32(params.alpha), np.float32(params.beta)
        recs = _reciprocals([w0, w1, w0 + w1, np.float32(lin_div)])  # w0 + w1 in float32, as the kernel adds
        f32s = np.array(
            [vecs[0].scale, vecs[1].scale, w0, w1, params.lambda_scale, lin_div, *(recs or [1.0] * 4)],
            np.float32,
        )
        flags = np.array(
            [vecs[0].scale != 1.0, vecs[1].scale != 1.0, params.consensus, params.normalize,
             params.lambda_scale != 1.0, recs is not None], np.bool_,
        )  # fmt: skip
        vec = np.array([[v.mode, v.thr, v.cutoff] for v in vecs], np.int64)
        common = (b, xs[0], xs[1], vec, vecs[0].mask, vecs[1].mask, f32s, flags)
        step = max(fused.TILE, (block or STREAM_BLOCK) // fused.TILE * fused.TILE)
        found = np.zeros(3, np.uint32)
        self.written = 0
        for j, s0 in enumerate(range(0, n, step)):
            e0 = min(n, s0 + step)
            # two block buffers in turn: the writer may still be writing the one before
            out = ws.get(f"y{tag}.{j % 2}", (e0 - s0,), bits)  # rounded and written by the kernel
            parts = [(s0 + s, s0 + e) for s, e in self._split(e0 - s0)]
            diags = [np.zeros(3, np.uint32) for _ in parts]
            args = [(*common, out, s0, s, e, g) for (s, e), g in zip(parts, diags, strict=True)]
            self._map(k.combine, args)
            np.maximum(found, np.maximum.reduce(diags), out=found)
            if found[2] >= k.EXP:
                return None
            write(out)
            self.written = e0
        dc, di = found[:2].copy().view(np.float32)
        return float(dc), float(di)

    def _split(self, n: int) -> list[tuple[int, int]]:
        if n < 4 * fused.TILE or self.threads == 1:
            return [(0, n)]
        step = -(-n // self.threads // fused.TILE) * fused.TILE
        return [(s, min(n, s + step)) for s in range(0, n, step)]


def _joined(parts, bands) -> tuple[np.ndarray, np.ndarray]:
    """One band (values, indices in the tensor) from each part's ``(values, indices, length)``: the parts'
    bands in their order, each part's indices counted from its start (one part: views, no copy)."""
    if len(bands) == 1:
        v, ix, nb = bands[0]
        return v[:nb], ix[:nb]
    values = np.concatenate([v[:nb] for v, _, nb in bands])
    index = np.concatenate([ix[:nb] + s for (s, _), (_, ix, nb) in zip(parts, bands, strict=True)])
    return values, index


def _reciprocals(divisors) -> list[np.float32] | None:
    """1/d of each float32 divisor (1 for 0, which the kernel divides by 1 instead) when every one is a power
    of two: then x·(1/d) is x/d, bit for bit (1/d is exact and both round the same exact quotient). None
    otherwise: the kernel divides. α = β = 1 (the default) gives divisors 1, 1, 2."""
    out = []
    for d in divisors:
        if d == 0:
            out.append(np.float32(1.0))
            continue
        with np.errstate(over="ignore"):  # 1/d of a subnormal d overflows: then divide
            r = np.float32(1.0) / np.float32(d)
        if np.frexp(np.float32(d))[0] not in (0.5, -0.5) or not np.isfinite(r):
            return None
        out.append(r)
    return out


def _bracket(sample: np.ndarray, want: int, n: int) -> tuple[int, int]:
    """The sample's order statistics ±:data:`BRACKET` around the k-th largest's quantile (|Δ| bits): the band
    that holds the k-th largest unless the sample missed it."""
    q = 1.0 - want / n
    lo_i = max(1, int((q - BRACKET) * SAMPLE)) - 1
    hi_i = min(SAMPLE, int((q + BRACKET) * SAMPLE) + 1) - 1
    # one order statistic per call: numpy selects a single kth with its SIMD partition (0.02 ms for this
    # sample), two in one call with introselect (0.4 ms)
    return tuple(int(np.partition(sample, j)[j]) for j in (lo_i, hi_i))


@lru_cache(maxsize=32)
def _sample_indices(n: int, size: int) -> np.ndarray:
    """The sample's positions in a vector of ``n`` values: drawn once per size (a model's tensors come in a
    few sizes), in increasing order, so that gathering them from the mapped inputs walks each page once
    (2.3 → 1.1 ms a tensor, of 0.37B's 168 per vector). Only the sample's values count, not their order."""
    idx = np.sort(np.random.default_rng(n).integers(n, size=size))
    idx.flags.writeable = False
    return idx

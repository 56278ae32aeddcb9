"""The numba kernels behind :mod:`finmerge.merge.fused_ties` (a module of its own so that numba can cache it).

Inputs are raw bits (uint16 for bf16, int16 for fp16, uint32 for fp32: see ``fused_kernel``; each input in
its own), upcast exactly per tile: bf16 by a 16-bit shift, fp16 by the hardware's conversion, chosen at
compile time. |Δ| values are handled as their bits: non-negative floats order like unsigned integers, so
thresholds, counts and maxima are integer work. Inner loops index slices from 0 (an offset index
``a[s + j]`` keeps numba's wraparound check and LLVM then does not vectorise: about 10× slower). Every
kernel reports whether an input (or the output) was not finite; the caller then redoes the tensor on the
torch path, which names the input and raises.
"""

from __future__ import annotations

import numba
import numpy as np

from finmerge.merge.fused import TILE
from finmerge.merge.fused_kernel import (
    EXP,  # noqa: F401 - fused_ties reads it as kernels.EXP
    abs_bits,
    exponent_bits,
    float32_of,
    lowest_bit_value,
    stored,
    trailing_zeros,
    u32,
    umax32,
    umin32,
    value_of,
    widened,
)
from finmerge.merge.pcg64 import fill as pcg64_fill

F0 = np.float32(0.0)
F1 = np.float32(1.0)
MAGNITUDE, MASK = 1, 2  # how a task vector is sparsified in combine(); 0: kept whole
u64 = np.uint64
U64_0, U64_1, U64_56 = u64(0), u64(1), u64(56)
PACK = u64(0x0102040810204080)  # a uint64 of eight 0/1 bytes times PACK: byte j's bit at bit 56 + j


@numba.njit(nogil=True, cache=True)
def abs_deltas(x, b, out):
    """|x − b| as bits into ``out`` (uint32; float32 subtraction, as torch's); returns the largest input
    exponent bits (``EXP``: a value was not finite). Load, check and subtract in one loop: no upcast copy
    of the inputs to store (0.80 → 0.67 ns a value in :func:`magnitude_band`)."""
    bad = u32(0)
    for j in range(x.size):
        wx, wb = widened(x[j]), widened(b[j])
        bad = umax32(bad, umax32(exponent_bits(wx), exponent_bits(wb)))
        out[j] = abs_bits(float32_of(wx) - float32_of(wb))
    return bad


@numba.njit(nogil=True, cache=True)
def sample_abs_deltas(x0, x1, b, idx, out0, out1):
    """|x0 − b| and |x1 − b| (float32 bits) at the sample's positions ``idx``
    (:data:`~finmerge.merge.fused_ties.SAMPLE`), in one loop (``x1`` may be ``x0``, for one vector). The
    positions spread over the whole tensor, so nearly every load misses the caches: numpy's two gathers and
    three elementwise passes took 0.93 ms for 2¹⁵ values of a tensor not in cache, this 0.66; both vectors
    at once load the base's value once (three misses a position instead of four)."""
    for j in range(idx.size):
        i = idx[j]
        fb = float32_of(widened(b[i]))
        out0[j] = abs_bits(float32_of(widened(x0[i])) - fb)
        out1[j] = abs_bits(float32_of(widened(x1[i])) - fb)


@numba.njit(nogil=True, cache=True)
def abs_deltas_pair(x0, x1, b, out0, out1):
    """:func:`abs_deltas` of two vectors of one base in one loop: the base loaded and checked once."""
    bad = u32(0)
    for j in range(b.size):
        w0, w1, wb = widened(x0[j]), widened(x1[j]), widened(b[j])
        bad = umax32(bad, umax32(exponent_bits(wb), umax32(exponent_bits(w0), exponent_bits(w1))))
        fb = float32_of(wb)
        out0[j] = abs_bits(float32_of(w0) - fb)
        out1[j] = abs_bits(float32_of(w1) - fb)
    return bad


@numba.njit(nogil=True, cache=True)
def _band_tile(ud, m, s, lo, hi, flag, groups, words, band_v, band_i, nb):
    """One tile's share of :func:`magnitude_band`: |Δ| bits ``ud[:m]`` of elements from ``s``; returns (how
    many exceed ``hi``, the band's new length). ``lo``, ``hi`` uint32."""
    span = hi - lo  # lo ≤ |Δ| ≤ hi as one unsigned compare: |Δ| − lo wraps above span when |Δ| < lo
    c = u32(0)
    for j in range(m):
        c += u32(ud[j] > hi)
    for j in range(m):
        flag[j] = u32(ud[j] - lo) <= span
    for j in range(m, TILE):  # a short last tile: no stale flags
        flag[j] = 0
    for w in range(TILE // 64):
        bits = U64_0
        for i in range(8):
            bits |= ((groups[8 * w + i] * PACK) >> U64_56) << u64(8 * i)
        words[w] = bits
    cap = band_v.size
    for w in range(TILE // 64):
        bits = words[w]
        while bits != U64_0:
            j = 64 * w + trailing_zeros(bits)
            if nb < cap:
                band_v[nb] = ud[j]
                band_i[nb] = s + j
            nb += 1
            bits &= bits - U64_1
    return c, nb


@numba.njit(nogil=True, cache=True)
def magnitude_band(x, b, lo, hi, band_v, band_i):
    """One pass over |x − b|: how many exceed ``hi``, and the values in [lo, hi] (bits) with their indices,
    in index order, into ``band_v`` / ``band_i``. Returns (above, in band (-1: more than fit), bad).

    The band holds ~2% of the values: a vectorised loop flags them (a byte each), the flags are packed into
    one bit each (eight bytes of 0/1 times PACK gather their low bits in the top byte), and the compaction
    visits only the set bits, lowest first (TZCNT): 2.5 → 1.55 ms for 2.9M values, where a branch per group
    of eight flags mispredicted on the ~17 % with one."""
    n = b.size
    ud = np.empty(TILE, np.uint32)
    flag = np.zeros(TILE, np.uint8)
    groups = flag.view(np.uint64)
    words = np.empty(TILE // 64, np.uint64)
    above, nb, bad = 0, 0, u32(0)
    lo, hi = u32(lo), u32(hi)  # 32-bit compares and counts: 16 lanes, not 4 (see fused_kernel)
    for s in range(0, n, TILE):
        m = min(TILE, n - s)
        bad = max(bad, abs_deltas(x[s : s + m], b[s : s + m], ud[:m]))
        c, nb = _band_tile(ud, m, s, lo, hi, flag, groups, words, band_v, band_i, nb)
        above += c
    return above, (nb if nb <= band_v.size else -1), bad


@numba.njit(nogil=True, cache=True)
def magnitude_bands(x0, x1, b, lo, hi, band_v, band_i, found):
    """:func:`magnitude_band` of both task vectors in one pass (the base read once): vector i's bracket
    ``lo[i]``, ``hi[i]``, its band into row i of ``band_v`` / ``band_i``, and ``found[i]`` = (above, in band
    (-1: more than fit)). Returns the largest input exponent bits."""
    n = b.size
    ud0, ud1 = np.empty(TILE, np.uint32), np.empty(TILE, np.uint32)
    flag = np.zeros(TILE, np.uint8)
    groups = flag.view(np.uint64)
    words = np.empty(TILE // 64, np.uint64)
    above0 = above1 = nb0 = nb1 = 0
    bad = u32(0)
    lo0, hi0, lo1, hi1 = u32(lo[0]), u32(hi[0]), u32(lo[1]), u32(hi[1])
    v0, v1, i0, i1 = band_v[0], band_v[1], band_i[0], band_i[1]
    for s in range(0, n, TILE):
        m = min(TILE, n - s)
        bad = max(bad, abs_deltas_pair(x0[s : s + m], x1[s : s + m], b[s : s + m], ud0[:m], ud1[:m]))
        c, nb0 = _band_tile(ud0, m, s, lo0, hi0, flag, groups, words, v0, i0, nb0)
        above0 += c
        c, nb1 = _band_tile(ud1, m, s, lo1, hi1, flag, groups, words, v1, i1, nb1)
        above1 += c
    cap = v0.size
    found[0, 0], found[0, 1] = above0, (nb0 if nb0 <= cap else -1)
    found[1, 0], found[1, 1] = above1, (nb1 if nb1 <= cap else -1)
    return bad


@numba.njit(nogil=True, cache=True)
def tie_cutoff(values, index, thr, quota):
    """The index of the ``quota``-th entry equal to ``thr`` (in order): the last tie at the threshold that
    the top-k keeps (torch's path keeps the lowest-index ties first). ``index``: the entries' positions
    (empty: their own). -1 when there are fewer."""
    seen = 0
    for j in range(values.size):
        if values[j] == thr:
            seen += 1
            if seen == quota:
                return index[j] if index.size else j
    return -1


@numba.njit(nogil=True, cache=True)
def _lsb_value(low, none):
    return np.float64(float32_of(low)) if low != none else 0.0


@numba.njit(nogil=True, cache=True)
def _exact(td, q):
    """Whether Σ|d| = ``td`` is exact in any order: every value is a multiple of the smallest set bit ``q``
    and every partial sum of non-negative values is at most the total, so when the total is below 2⁵²·q
    every addition in *any* order is exact, and torch's ``sum(dtype=float64)`` (whatever its order and
    thread count) returns this very double. False: the caller asks torch (and when |d| overflowed)."""
    return (td == 0.0) or (td < q * 4503599627370496.0)


@numba.njit(nogil=True, cache=True)
def dare_pass(x, b, states, chunk, dthr, mask, rescale, sums, exact):
    """dare's keep mask of a whole task vector (``x``, ``b``: raw inputs) and, with ``rescale``, each chunk's
    L1 sums: ``sums[c]`` = (Σ|d|, Σ|kept d|), ``exact[c]`` as :func:`l1_chunk`'s. Chunk c's draws are the
    words of the generator ``states[c]`` (see :mod:`finmerge.merge.pcg64`), four 16-bit draws each, as
    ``methods._random_keep`` makes them. Returns the largest input exponent bits (with ``rescale``: the
    inputs are not read without it)."""
    n = b.size
    words = np.empty((chunk + 3) // 4, np.uint64)
    draws = words.view(np.uint16)
    unused = np.empty(0, np.float32)
    bad = u32(0)
    for c in range(states.shape[0]):
        a = c * chunk
        m = min(chunk, n - a)
        pcg64_fill(states[c], words[: (m + 3) // 4])
        if rescale:
            xs, bs, ms = x[a : a + m], b[a : a + m], mask[a : a + m]
            got = l1_chunk(xs, bs, MASK, 0, -1, draws[:m], dthr, ms, unused, unused, False)
            bad = umax32(bad, got[0])
            sums[c, 0], sums[c, 1], exact[c] = got[1], got[2], got[3]
        else:
            draw_mask(draws[:m], dthr, mask[a : a + m])
    return bad


@numba.njit(nogil=True, cache=True)
def draw_mask(draws, dthr, mask):
    """The keep mask of one chunk (a slice): 1 where its 16-bit draw is below ``dthr`` (density·2¹⁶)."""
    for j in range(mask.size):
        mask[j] = draws[j] < dthr


@numba.njit(nogil=True, cache=True)
def _elected(a, c):
    """The sign election of d0 = ``a``, d1 = ``c``: each kept where its sign is their sum's (a sum ≥ 0 counts
    as +; a NaN sum keeps neither), else +0."""
    pos, neg = (a + c) >= F0, (a + c) < F0
    e0 = a if ((a > F0) & pos) | ((a < F0) & neg) else F0
    e1 = c if ((c > F0) & pos) | ((c < F0) & neg) else F0
    return e0, e1


@numba.njit(nogil=True, cache=True)
def combine(b, x0, x1, vec, masks0, masks1, f32s, flags, out, out_start, start, stop, diag):
    """Merged elements [start, stop) of two task vectors, written to ``out`` in its format (uint16: bf16,
    int16: fp16, both rounded to nearest even as torch rounds; uint32: float32), where ``out[0]`` is element
    ``out_start`` (the pass writes a tensor in blocks). ``vec[i]`` = (mode,
    threshold bits, tie cutoff index) of vector i; ``f32s`` = (scale0, scale1, w0, w1, λ, linear divisor,
    1/w0, 1/w1, 1/(w0 + w1), 1/linear divisor); ``flags`` = (use scale0, use scale1, consensus, normalize,
    use λ, multiply by the reciprocals: every divisor is a power of two, so x/d is x·(1/d) exactly, and a
    multiplication costs less than a division; a divisor 0 stands for 1, and so does its reciprocal).
    ``diag`` gets the bits of max|y−x1| and max|y−x0| over the float32 result (what the torch path
    reports) and, at [2], the largest exponent bits of the inputs, the result and the rounded output
    (``EXP``: not finite).

    Per element, the torch path's operations in its order, each rounded as it rounds them (see
    :func:`finmerge.merge.methods.generalized_task_arithmetic`): d = x − b; dropped entries zeroed
    (magnitude: +0, as hardshrink writes it; mask: d·0); d·scale; d·w; the sign election keeps d where its
    sign is the sum's (the sum ≥ 0 counts as +), else +0, and the divisor is the sum of the agreeing
    weights (0 → 1); every product there is by 0 or 1, so torch's fused multiply-adds round the same; ·λ;
    + b. A product the torch path leaves out (a scale, weight or λ of 1, a kept magnitude entry's mask) is
    a product by 1 here, which changes no bit: so each step is one select or product per element, and a
    tile takes three loops that LLVM vectorises (a loop per step, as before, made fifteen passes over the
    tile: 1.33 → 1.09 ns a value for a 3M-value ties tensor, 1.53 → 1.11 for dare's)."""
    d0, d1 = np.empty(TILE, np.float32), np.empty(TILE, np.float32)
    ones = np.ones(TILE, np.uint8)  # the mask of a vector that has none
    scale0, scale1, w0, w1, lam, lin_div = f32s[0], f32s[1], f32s[2], f32s[3], f32s[4], f32s[5]
    consensus, normalize, recip = flags[2], flags[3], flags[5]
    r0, r1, r01, lin_rec = f32s[6], f32s[7], f32s[8], f32s[9]
    if not normalize:  # nothing to divide: products by 1
        r0 = r1 = r01 = lin_rec = F1
    divide = normalize and not recip
    # A magnitude vector keeps |d| > thr, and |d| = thr up to its tie cutoff: |d| ≥ floor with floor thr + 1
    # or thr (|d| bits are below 2³¹, so thr + 1 fits); any other vector keeps all, |d| ≥ 0.
    mode0, mode1 = vec[0, 0], vec[1, 0]
    t0 = u32(vec[0, 1]) if mode0 == MAGNITUDE else u32(0)
    t1 = u32(vec[1, 1]) if mode1 == MAGNITUDE else u32(0)
    mx0 = mx1 = bad = u32(0)
    for s in range(start, stop, TILE):
        m = min(TILE, stop - s)
        bs, xs0, xs1 = b[s : s + m], x0[s : s + m], x1[s : s + m]
        k0 = masks0[s : s + m] if mode0 == MASK else ones[:m]
        k1 = masks1[s : s + m] if mode1 == MASK else ones[:m]
        tied0 = min(m, max(0, vec[0, 2] - s + 1)) if mode0 == MAGNITUDE else m
        tied1 = min(m, max(0, vec[1, 2] - s + 1)) if mode1 == MAGNITUDE else m
        p = 0
        while p < m:  # pieces on one side of both cutoffs (one piece but in the tile holding a cutoff)
            q = min(m, tied0 if p < tied0 else m, tied1 if p < tied1 else m)
            g0 = u32(t0 if p < tied0 else t0 + u32(1))  # u32(): numba widens u32 + u32 to 64 bits, and
            g1 = u32(t1 if p < tied1 else t1 + u32(1))  # the loop then runs at a quarter of its speed
            # each piece's slices indexed from 0 (see the module's docstring)
            bp, xp0, xp1, kp0, kp1, dp0, dp1 = bs[p:q], xs0[p:q], xs1[p:q], k0[p:q], k1[p:q], d0[p:q], d1[p:q]
            for j in range(q - p):
                ub, u0, u1 = widened(bp[j]), widened(xp0[j]), widened(xp1[j])
                bad = umax32(bad, umax32(exponent_bits(ub), umax32(exponent_bits(u0), exponent_bits(u1))))
                fb = float32_of(ub)
                a, c = float32_of(u0) - fb, float32_of(u1) - fb
                a = a if abs_bits(a) >= g0 else F0
                c = c if abs_bits(c) >= g1 else F0
                a = a * (F1 if kp0[j] else F0)
                c = c * (F1 if kp1[j] else F0)
                dp0[j] = (a * scale0) * w0
                dp1[j] = (c * scale1) * w1
            p = q
        # the sum (with consensus: the elected one), normalised, into d0; a loop per case, for LLVM
        if consensus and divide:  # a divisor that is not a power of two (rare): divide as torch does
            for j in range(m):
                e0, e1 = _elected(d0[j], d1[j])
                dv = (F0 + (F1 if e0 != F0 else F0) * w0) + (F1 if e1 != F0 else F0) * w1
                d0[j] = (e0 + e1) / (F1 if dv == F0 else dv)
        elif consensus:
            for j in range(m):
                e0, e1 = _elected(d0[j], d1[j])
                n0, n1 = e0 != F0, e1 != F0
                d0[j] = (e0 + e1) * (r01 if n0 & n1 else (r0 if n0 else (r1 if n1 else F1)))
        elif divide:
            for j in range(m):
                d0[j] = (d0[j] + d1[j]) / lin_div
        else:
            for j in range(m):
                d0[j] = (d0[j] + d1[j]) * lin_rec
        # ·λ, + b; |Δ| against the (unrounded) result, as torch's max_abs_diff(acc, x) reports it; rounded
        o = out[s - out_start : s - out_start + m]
        for j in range(m):
            acc = d0[j] * lam + float32_of(widened(bs[j]))
            bad = umax32(bad, exponent_bits(abs_bits(acc)))
            mx1 = umax32(mx1, abs_bits(float32_of(widened(xs1[j])) - acc))
            mx0 = umax32(mx0, abs_bits(float32_of(widened(xs0[j])) - acc))
            r = stored(o, acc)
            o[j] = r
            # a finite result beyond the output format's range is rounded to Inf: not finite either
            bad = umax32(bad, exponent_bits(abs_bits(value_of(o, r))))
    diag[0] = umax32(diag[0], mx1)
    diag[1] = umax32(diag[1], mx0)
    diag[2] = umax32(diag[2], bad)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _l1_masked(x, b, draws, dt, mask):
    """:func:`l1_chunk` of a MASK chunk that writes no |d| (dare's whole-vector pass), per tile: the float64
    sums and the smallest set bit each in a loop of their own over the tile's |d| bits, which LLVM
    vectorises; returns (bad, Σ|d|, Σ|kept d|, smallest set bit)."""
    none = u32(0xFFFFFFFF)
    bad, low = u32(0), none
    td = tk = 0.0
    ad, ak = np.empty(TILE, np.uint32), np.empty(TILE, np.uint32)  # a tile's |d| and |kept d| bits
    for s in range(0, x.size, TILE):
        m = min(TILE, x.size - s)
        xs, bs, ds, ms = x[s : s + m], b[s : s + m], draws[s : s + m], mask[s : s + m]
        for j in range(m):
            ux, ub = widened(xs[j]), widened(bs[j])
            bad = umax32(bad, umax32(exponent_bits(ux), exponent_bits(ub)))
            a = abs_bits(float32_of(ux) - float32_of(ub))
            k = u32(ds[j]) < dt
            ms[j] = k
            ad[j] = a
            ak[j] = a if k else u32(0)
        for j in range(m):
            td += np.float64(float32_of(ad[j]))
        for j in range(m):
            tk += np.float64(float32_of(ak[j]))
        for j in range(m):
            lsb = lowest_bit_value(ad[j])
            low = umin32(low, lsb if lsb != 0 else none)
    return bad, td, tk, low


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def l1_chunk(x, b, mode, thr, lim, draws, dthr, mask, absd, absk, write):
    """One chunk (slices ``x``, ``b``, ``mask``, ``absd``, ``absk``) of a task vector for the L1 rescale, in
    one loop (about 3x faster than a loop per step over a chunk that outgrows the L2 cache): ``mode`` MASK
    writes the keep mask (draw below ``dthr``) to ``mask``, MAGNITUDE keeps the top-k (``lim``: the tie
    cutoff in the chunk). Returns (largest input exponent bits, Σ|d|, Σ|kept d|, exact): the float64 sums
    (``reassoc`` only lets them be added in any order, which ``exact`` says is safe, see :func:`_exact`).
    ``write``: |d| into ``absd`` and |kept d| into ``absk`` (float32), for torch's own float64 sums of a
    chunk that is not ``exact``; False leaves them alone (8 bytes an element that nothing else reads)."""
    if mode == MASK and not write:  # dare's pass over whole vectors: the per-tile loops
        bad, td, tk, low = _l1_masked(x, b, draws, u32(dthr), mask)
    else:
        bad, td, tk, low = _l1_loop(x, b, mode, thr, lim, draws, dthr, mask, absd, absk, write)
    # (in the loops' own function, this use of ``low`` kept LLVM from vectorising them: 3x slower)
    return bad, td, tk, _exact(td, _lsb_value(low, u32(0xFFFFFFFF)))


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _l1_loop(x, b, mode, thr, lim, draws, dthr, mask, absd, absk, write):
    """:func:`l1_chunk`'s sums in one loop, any mode; returns (bad, Σ|d|, Σ|kept d|, smallest set bit)."""
    m = x.size
    t, dt = u32(thr), u32(dthr)
    tied = min(m, max(0, lim + 1))
    none = u32(0xFFFFFFFF)
    bad = u32(0)
    low = none
    td = 0.0
    tk = 0.0
    for j in range(m):
        ux, ub = widened(x[j]), widened(b[j])
        bad = umax32(bad, umax32(exponent_bits(ux), exponent_bits(ub)))
        a = abs_bits(float32_of(ux) - float32_of(ub))
        fa = float32_of(a)
        if mode == MASK:
            k = u32(draws[j]) < dt
            mask[j] = k
        else:
            k = a >= t if j < tied else a > t
        fk = fa if k else F0
        if write:
            absd[j] = fa
            absk[j] = fk
        td += np.float64(fa)
        tk += np.float64(fk)
        lsb = lowest_bit_value(a)  # the smallest set bit over the nonzero ones (see _exact)
        low = umin32(low, lsb if lsb != 0 else none)
    return bad, td, tk, low

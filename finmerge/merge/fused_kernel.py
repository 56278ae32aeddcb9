"""The numba kernel behind :mod:`finmerge.merge.fused` (a module of its own so that numba can cache it)."""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.core.extending import intrinsic

from finmerge.merge.fused import TILE


@intrinsic
def fma32(typingctx, a, b, c):  # one rounding, as torch's add_(x, alpha=c) on CPU
    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


u32 = np.uint32
EXP = u32(0x7F800000)  # a float32 whose exponent bits are all set is Inf or NaN
ABS = u32(0x7FFFFFFF)


# Every loop below is a plain elementwise loop or an integer max reduction, so LLVM vectorises it:
# |Δ| of floats compares as their bits (non-negative IEEE floats order like unsigned integers, and a
# NaN's bits exceed Inf's), which makes the max reductions and the finiteness check integer work.
@numba.njit(nogil=True, cache=True)
def weighted_sums(b, i, d, shift, coefs, first, out, out_bf16, start, stop, diag):
    """Rows of ``out[k]`` = Σ_r coefs[k, r]·x_r over elements [start, stop); ``diag[k]`` gets the bits of
    max|y−d| and max|y−i| (rounded y; ≥ EXP when a value was not finite). ``first[k]``: the first
    nonzero term (3: none); the inputs' non-finite count goes to ``diag[k, 2]``."""
    ub = np.empty(TILE, np.uint32)
    ui = np.empty(TILE, np.uint32)
    ud = np.empty(TILE, np.uint32)
    acc = np.empty(TILE, np.float32)
    dif = np.empty(TILE, np.float32)
    fb, fi, fd = ub.view(np.float32), ui.view(np.float32), ud.view(np.float32)
    ua, udif = acc.view(np.uint32), dif.view(np.uint32)
    sh = u32(shift)
    for s in range(start, stop, TILE):
        m = min(TILE, stop - s)
        bs, is_, ds = b[s : s + m], i[s : s + m], d[s : s + m]
        for j in range(m):
            ub[j] = u32(bs[j]) << sh
        for j in range(m):
            ui[j] = u32(is_[j]) << sh
        for j in range(m):
            ud[j] = u32(ds[j]) << sh
        bad = u32(0)
        for j in range(m):
            bad = max(bad, ub[j] & EXP, ui[j] & EXP, ud[j] & EXP)
        for k in range(coefs.shape[0]):
            ci, cd = coefs[k, 1], coefs[k, 2]
            f = first[k]
            if f == 3:
                acc[:m] = 0.0
            else:
                first_x = fb if f == 0 else (fi if f == 1 else fd)
                c0 = coefs[k, f]
                if c0 == 1.0:
                    acc[:m] = first_x[:m]
                else:
                    for j in range(m):
                        acc[j] = first_x[j] * c0
            if f < 1 and ci != 0.0:
                for j in range(m):
                    acc[j] = fma32(fi[j], ci, acc[j])
            if f < 2 and cd != 0.0:
                for j in range(m):
                    acc[j] = fma32(fd[j], cd, acc[j])
            o = out[k, s : s + m]
            if out_bf16:  # round to nearest even, as torch's float → bfloat16
                for j in range(m):
                    u = ua[j]
                    r = (u + (((u >> u32(16)) & u32(1)) + u32(0x7FFF))) >> u32(16)
                    o[j] = r
                    ua[j] = r << u32(16)
            else:
                for j in range(m):
                    o[j] = ua[j]
            mc = u32(0)
            for j in range(m):
                dif[j] = acc[j] - fd[j]
            for j in range(m):
                mc = max(mc, udif[j] & ABS)
            mi = u32(0)
            for j in range(m):
                dif[j] = acc[j] - fi[j]
            for j in range(m):
                mi = max(mi, udif[j] & ABS)
            diag[k, 0] = max(diag[k, 0], mc)
            diag[k, 1] = max(diag[k, 1], mi)
            if bad >= EXP:
                diag[k, 2] = u32(1)

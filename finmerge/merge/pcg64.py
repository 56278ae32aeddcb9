"""numpy's PCG64 (XSL-RR 128/64) inside numba kernels: the same words as ``PCG64(seed).random_raw``.

dare draws its keep masks from PCG64 words (``methods._random_keep``: one generator per chunk, seeded by
(seed, chunk index)). Asking numpy for them costs a Python call, an allocation and a pass over memory per
chunk; here a kernel makes them in place from the generator's state after seeding. The state is a 128-bit
LCG, advanced by LLVM's 128-bit integers. One chain of multiplications is latency-bound, so a block of
words is made as four chains, each started at its offset by PCG's jump-ahead (the LCG's closed form).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

from finmerge.merge import kernel_cache

kernel_cache.install()  # before any kernel here is compiled and saved (see kernel_cache)

MULTIPLIER = (2549297995355413924 << 64) + 4865540595714422341  # PCG_DEFAULT_MULTIPLIER_128
_MASK64 = (1 << 64) - 1
_I64, _I128 = ir.IntType(64), ir.IntType(128)
_U128 = types.UniTuple(types.uint64, 2)


def _join(builder, hi, lo):
    wide = builder.shl(builder.zext(hi, _I128), ir.Constant(_I128, 64))
    return builder.or_(wide, builder.zext(lo, _I128))


def _split(context, builder, sig, v):
    hi = builder.trunc(builder.lshr(v, ir.Constant(_I128, 64)), _I64)
    return context.make_tuple(builder, sig.return_type, [hi, builder.trunc(v, _I64)])


@intrinsic
def muladd128(typingctx, ah, al, bh, bl, ch, cl):  # (a·b + c) mod 2¹²⁸, each as (hi, lo) uint64 halves
    def codegen(context, builder, sig, args):
        a, b, c = (_join(builder, args[i], args[i + 1]) for i in (0, 2, 4))
        return _split(context, builder, sig, builder.add(builder.mul(a, b), c))

    u = types.uint64
    return _U128(u, u, u, u, u, u), codegen


@intrinsic
def xsl_rr(typingctx, hi, lo):  # PCG's output of a state: (hi ^ lo) rotated right by the top 6 bits
    def codegen(context, builder, sig, args):
        hi, lo = args
        rot = builder.lshr(hi, ir.Constant(_I64, 58))
        back = builder.and_(builder.sub(ir.Constant(_I64, 64), rot), ir.Constant(_I64, 63))
        x = builder.xor(hi, lo)
        return builder.or_(builder.lshr(x, rot), builder.shl(x, back))  # LLVM makes it one rotate

    return types.uint64(types.uint64, types.uint64), codegen


M_HI, M_LO = np.uint64(MULTIPLIER >> 64), np.uint64(MULTIPLIER & _MASK64)
U0, U1 = np.uint64(0), np.uint64(1)


@numba.njit(nogil=True, cache=True)
def _advance(hi, lo, ih, il, delta):
    """The state ``delta`` steps on (Brown's jump-ahead for LCGs, as numpy's ``advance``)."""
    mh, ml, ph, pl = M_HI, M_LO, ih, il  # one step: ·M + inc
    ah, al, bh, bl = U0, U1, U0, U0  # accumulated: ·A + B, from the identity
    while delta > 0:
        if delta & 1:
            ah, al = muladd128(ah, al, mh, ml, U0, U0)
            bh, bl = muladd128(bh, bl, mh, ml, ph, pl)
        nh, nl = muladd128(mh, ml, U0, U1, U0, U1)  # M + 1
        ph, pl = muladd128(nh, nl, ph, pl, U0, U0)
        mh, ml = muladd128(mh, ml, mh, ml, U0, U0)
        delta >>= 1
    return muladd128(ah, al, hi, lo, bh, bl)


@numba.njit(nogil=True, cache=True)
def fill(state, out):
    """``out`` = the next ``out.size`` words of the generator ``state`` = (state hi, lo, inc hi, lo) (numpy's
    ``PCG64.state``), as ``random_raw`` gives them; the state is advanced past them."""
    hi, lo, ih, il = state[0], state[1], state[2], state[3]
    n = out.size
    q = n // 4
    # four chains: words [0, q), [q, 2q), [2q, 3q), [3q, 4q); the tail after them from the last chain
    h0, l0 = hi, lo
    h1, l1 = _advance(hi, lo, ih, il, q)
    h2, l2 = _advance(hi, lo, ih, il, 2 * q)
    h3, l3 = _advance(hi, lo, ih, il, 3 * q)
    o0, o1, o2, o3, tail = out[:q], out[q : 2 * q], out[2 * q : 3 * q], out[3 * q : 4 * q], out[4 * q :]
    for w in range(q):  # each chain's words indexed from 0 (an offset index keeps a wraparound check)
        h0, l0 = muladd128(h0, l0, M_HI, M_LO, ih, il)
        h1, l1 = muladd128(h1, l1, M_HI, M_LO, ih, il)
        h2, l2 = muladd128(h2, l2, M_HI, M_LO, ih, il)
        h3, l3 = muladd128(h3, l3, M_HI, M_LO, ih, il)
        o0[w], o1[w], o2[w], o3[w] = xsl_rr(h0, l0), xsl_rr(h1, l1), xsl_rr(h2, l2), xsl_rr(h3, l3)
    for w in range(tail.size):
        h3, l3 = muladd128(h3, l3, M_HI, M_LO, ih, il)
        tail[w] = xsl_rr(h3, l3)
    state[0], state[1] = h3, l3


def seeded_state(seed) -> np.ndarray:
    """(state hi, lo, inc hi, lo) of ``np.random.PCG64(seed)`` right after seeding, for :func:`fill`."""
    st = np.random.PCG64(seed).state["state"]
    s, inc = st["state"], st["inc"]
    return np.array([s >> 64, s & _MASK64, inc >> 64, inc & _MASK64], np.uint64)

"""The numba kernel behind :mod:`finmerge.merge.fused` (a module of its own so that numba can cache it)."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.core.extending import intrinsic

from finmerge.merge import kernel_cache
from finmerge.merge.fused import TILE

kernel_cache.install()  # before any kernel here is compiled and saved (see kernel_cache)


@intrinsic
def fma32(typingctx, a, b, c):  # one rounding, as torch's add_(x, alpha=c) on CPU
    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


# Numba widens integer arithmetic on uint16 / uint32 to 64 bits, and LLVM then vectorises the loop only 4
# lanes wide; these helpers keep every integer step in 32 bits (16 lanes under AVX-512).
_I32 = ir.IntType(32)


def _to32(builder, v):
    """An unsigned integer value as 32 bits (zero-extended or truncated)."""
    if v.type.width < 32:
        return builder.zext(v, _I32)
    return builder.trunc(v, _I32) if v.type.width > 32 else v


# numba has no float16 on the CPU, so fp16 values travel as their bits in *signed* 16-bit integers: the type
# of an input (or output) array says its float format at compile time, and each format gets its own machine
# code (no per-element test). uint16: bf16 bits; int16: fp16 bits; uint32: float32 bits.
_HALF, _FLOAT = ir.HalfType(), ir.FloatType()


@intrinsic
def widened(typingctx, x):  # an input's bits as float32 bits, exactly, by the type that carries them:
    # bf16 (uint16) shifted left by 16, fp16 (int16) converted by the hardware (F16C), float32 (uint32) as is
    def codegen(context, builder, signature, args):
        kind, v = signature.args[0], args[0]
        if kind == types.int16:
            return builder.bitcast(builder.fpext(builder.bitcast(v, _HALF), _FLOAT), _I32)
        if kind == types.uint16:
            return builder.shl(builder.zext(v, _I32), ir.Constant(_I32, 16))
        return _to32(builder, v)

    return types.uint32(x), codegen


@intrinsic
def stored(typingctx, out, y):  # float32 y rounded once to the element type of array ``out``, as its bits:
    # bf16 (uint16) and fp16 (int16) to nearest even, as torch rounds; float32 (uint32) as it is
    kind = out.dtype

    def codegen(context, builder, signature, args):
        u = builder.bitcast(args[1], _I32)
        if kind == types.uint16:
            c16 = ir.Constant(_I32, 16)
            odd = builder.and_(builder.lshr(u, c16), ir.Constant(_I32, 1))
            u = builder.lshr(builder.add(u, builder.add(odd, ir.Constant(_I32, 0x7FFF))), c16)
            return builder.trunc(u, ir.IntType(16))
        if kind == types.int16:  # IEEE round to nearest even (F16C's vcvtps2ph), overflow to ±Inf
            return builder.bitcast(builder.fptrunc(args[1], _HALF), ir.IntType(16))
        return u

    return kind(out, types.float32), codegen


@intrinsic
def value_of(typingctx, out, r):  # the float32 value of bits ``r`` as :func:`stored` wrote them in ``out``
    kind = out.dtype

    def codegen(context, builder, signature, args):
        r = args[1]
        if kind == types.uint16:
            return builder.bitcast(builder.shl(builder.zext(r, _I32), ir.Constant(_I32, 16)), _FLOAT)
        if kind == types.int16:
            return builder.fpext(builder.bitcast(r, _HALF), _FLOAT)
        return builder.bitcast(r, _FLOAT)

    return types.float32(out, kind), codegen


@intrinsic
def float32_of(typingctx, u):  # the float32 whose bits are ``u``
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


def _masked(mask: int, from_float: bool):
    """An intrinsic body: ``bits & mask``, of float32 bits (``from_float``: of a float32 value)."""

    def codegen(context, builder, signature, args):
        u = builder.bitcast(args[0], _I32) if from_float else args[0]
        return builder.and_(u, ir.Constant(_I32, mask))

    return codegen


def _picked(op: str):
    """An intrinsic body: ``a if a <op> b else b``, unsigned (``>``: the max, ``<``: the min)."""

    def codegen(context, builder, signature, args):
        return builder.select(builder.icmp_unsigned(op, args[0], args[1]), args[0], args[1])

    return codegen


@intrinsic
def exponent_bits(typingctx, u):  # the exponent field of float32 bits: all set (EXP) for Inf and NaN
    return types.uint32(types.uint32), _masked(0x7F800000, from_float=False)


@intrinsic
def abs_bits(typingctx, y):  # the bits of |y|: non-negative floats order like their bits, NaN above Inf
    return types.uint32(types.float32), _masked(0x7FFFFFFF, from_float=True)


@intrinsic
def low31(typingctx, u):  # float32 bits without the sign: the bits of |x|
    return types.uint32(types.uint32), _masked(0x7FFFFFFF, from_float=False)


@intrinsic
def umax32(typingctx, a, b):
    return types.uint32(types.uint32, types.uint32), _picked(">")


@intrinsic
def umin32(typingctx, a, b):
    return types.uint32(types.uint32, types.uint32), _picked("<")


@intrinsic
def trailing_zeros(typingctx, v):  # the index of the lowest set bit of a nonzero uint64 (one TZCNT)
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.uint64(types.uint64), codegen


@intrinsic
def lowest_bit_value(typingctx, u):  # the bits of the value of non-negative float32 ``u``'s lowest set bit:
    # u minus u with its lowest significand bit cleared (exact), or u itself when that bit is the implicit one
    def codegen(context, builder, signature, args):
        u = args[0]
        frac = builder.and_(u, ir.Constant(_I32, 0x7FFFFF))
        cleared = builder.and_(u, builder.sub(u, ir.Constant(_I32, 1)))
        cleared = builder.select(builder.icmp_unsigned("!=", frac, ir.Constant(_I32, 0)), cleared, frac)
        f = ir.FloatType()
        diff = builder.fsub(builder.bitcast(u, f), builder.bitcast(cleared, f))
        return builder.bitcast(diff, _I32)

    return types.uint32(types.uint32), codegen


u32 = np.uint32
EXP = u32(0x7F800000)  # a float32 whose exponent bits are all set is Inf or NaN


# Each candidate is one loop over a tile: its sum, rounding, store and both max-|Δ| reductions per element,
# in registers. Loop-invariant choices (first term, c = 1, terms left out) are selects LLVM vectorises.
# |Δ| of floats compares as their bits, which makes the max reductions and the finiteness check integer work.
@numba.njit(nogil=True, cache=True)
def weighted_sums(b, i, d, coefs, first, out, start, stop, diag):
    """Rows of ``out[k]`` = Σ_r coefs[k, r]·x_r over elements [start, stop), rounded to ``out``'s format
    (uint16: bf16, int16: fp16, uint32: float32; each input in its own); ``diag[k]`` gets the bits of
    max|y−d| and max|y−i| (rounded y; ≥ EXP when a value was not finite). ``first[k]``: the first
    nonzero term (3: none); the inputs' non-finite count goes to ``diag[k, 2]``."""
    fb = np.empty(TILE, np.float32)
    fi = np.empty(TILE, np.float32)
    fd = np.empty(TILE, np.float32)
    for s in range(start, stop, TILE):
        m = min(TILE, stop - s)
        bs, is_, ds = b[s : s + m], i[s : s + m], d[s : s + m]
        bad = u32(0)
        for j in range(m):  # exact upcast (bf16: a 16-bit shift; fp16: F16C), and the inputs' finiteness
            xb, xi, xd = widened(bs[j]), widened(is_[j]), widened(ds[j])
            fb[j], fi[j], fd[j] = float32_of(xb), float32_of(xi), float32_of(xd)
            bad = umax32(bad, umax32(exponent_bits(xb), umax32(exponent_bits(xi), exponent_bits(xd))))
        for k in range(coefs.shape[0]):
            f = first[k]
            zero = f == 3  # every coefficient zero: the sum is +0
            x0 = fb if f == 0 or zero else (fi if f == 1 else fd)
            c0 = np.float32(0.0) if zero else coefs[k, f]
            scale = c0 != 1.0  # c = 1 copies the first term (torch: no multiply)
            use_i = f < 1 and coefs[k, 1] != 0.0
            use_d = f < 2 and coefs[k, 2] != 0.0
            ci, cd = coefs[k, 1], coefs[k, 2]
            o = out[k, s : s + m]
            mc = u32(0)
            mi = u32(0)
            for j in range(m):
                y = x0[j] * c0 if scale else x0[j]
                y = fma32(fi[j], ci, y) if use_i else y  # torch's add_(x, alpha=c) is an FMA on CPU
                y = fma32(fd[j], cd, y) if use_d else y
                y = np.float32(0.0) if zero else y
                r = stored(o, y)
                o[j] = r
                y = value_of(o, r)  # the diagnostics compare the rounded output
                mc = umax32(mc, abs_bits(y - fd[j]))
                mi = umax32(mi, abs_bits(y - fi[j]))
            diag[k, 0] = umax32(diag[k, 0], mc)
            diag[k, 1] = umax32(diag[k, 1], mi)
            if bad >= EXP:
                diag[k, 2] = u32(1)

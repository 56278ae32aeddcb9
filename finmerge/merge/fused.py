"""One fused pass for linear merges: K weighted sums of the same three row blocks, read once.

The eager torch path of :func:`finmerge.merge.methods.weighted_sum` makes a dozen passes over each block
(three upcasts, a multiply, two fused adds, a rounding, an upcast back and two max-|Δ| reductions), so it
runs far below the memory bandwidth. This kernel (numba, compiled once and cached on disk) does it all
per 2,048-element tile that stays in L1, for K coefficient sets at once: a sweep's K candidates cost one
read of the inputs.

Bit-identical to the torch path by construction, and tested so:
* inputs are upcast exactly (bf16 → fp32 is a 16-bit shift, fp16 → fp32 the hardware's conversion); fp32
  inputs are used as they are;
* ``Σ c_k·x_k`` is evaluated as torch evaluates it: terms with ``c = 0`` left out, the first term copied
  (``c = 1``) or multiplied, every further term added with one fused multiply-add (``add_(x, alpha=c)``
  is an FMA on CPU);
* one rounding to the output dtype, round-to-nearest-even (torch's float → bfloat16 / float16);
* max |y − θ_cpt| and max |y − θ_inst| on the rounded output, in fp32, for ``merge_report.json``.

Any non-finite value in a block makes the caller redo that block on the torch path, which names the input
and the rows. Other dtypes (fp64) take the torch path; ties and dare have kernels of their own
(:mod:`finmerge.merge.fused_ties`), slerp takes the torch path.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from finmerge.merge.method_registry import ROLES
from finmerge.models import dtypes

TILE = 2048
# the float formats the kernels take, each with the integer type that carries its bits there and names the
# format to them (fp16 as *signed*: see fused_kernel); inputs and output may each be in any of them
FORMAT_BITS = {"bfloat16": np.uint16, "float16": np.int16, "float32": np.uint32}


# Below this many merged elements (about a 16M-parameter model) the torch path is kept: the kernels' one-time
# costs (numba's import and loading its cached machine code, ~0.3 s; compiling it on a first run, ~0.5 s)
# exceed what they save when torch is loaded already. Where it is not, the torch path imports it (~1 s), yet a
# command on such a model waits as long for its tracking side process (MLflow's import): the same wall time.
MIN_ELEMENTS = 16_000_000


def available(in_dtypes, out_dtype) -> bool:
    """Whether the fused kernel handles inputs of ``in_dtypes`` written as ``out_dtype`` (DTypes or torch's),
    and is allowed (``FINMERGE_FUSED=0`` forces the torch path, e.g. to compare the two)."""
    if os.environ.get("FINMERGE_FUSED", "auto") == "0":
        return False
    names = {dtypes.of(d).name for d in (*in_dtypes, out_dtype)}
    return names <= FORMAT_BITS.keys() and fp16_convertible(names)


def fp16_convertible(types) -> bool:
    """fp16 in the kernels relies on the CPU converting it (x86's F16C, any 64-bit ARM); elsewhere it takes
    the torch path rather than a conversion routine the JIT may not find."""
    return "float16" not in {dtypes.of(d).name for d in types} or _hardware_fp16()


@lru_cache(maxsize=1)
def _hardware_fp16() -> bool:
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        return "f16c" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def worth_it(total_elements: int) -> bool:
    """``FINMERGE_FUSED``: ``1`` always, ``0`` never, unset / ``auto`` from ``MIN_ELEMENTS`` merged elements."""
    mode = os.environ.get("FINMERGE_FUSED", "auto")
    return mode == "1" or (mode != "0" and total_elements >= MIN_ELEMENTS)


@lru_cache(maxsize=1)
def numba_target() -> None:
    """Start numba's CPU target without scipy.linalg: the target's first use imports it (0.15 s of CPU, about
    a tenth of a 0.4B merge's pass) only to see whether ``np.dot`` and the like may call BLAS inside kernels,
    and none of ours does. Hidden while the target loads, scipy.linalg is seen as absent, as where scipy is
    not installed; so numba code compiled later in this process cannot use ``np.dot`` (finmerge has none).
    Nothing is hidden when numba or scipy.linalg was in use before."""
    import numba  # noqa: F401 (imports scipy's top package, which is cheap)
    from numba.core.registry import cpu_target

    hide = "scipy.linalg" not in sys.modules and "numba.np.arraymath" not in sys.modules
    if hide:
        sys.modules["scipy.linalg"] = None  # `import scipy.linalg` raises ImportError meanwhile
    try:
        cpu_target.target_context.refresh()  # what the first call of a kernel would do
    finally:
        if hide and sys.modules.get("scipy.linalg", 0) is None:
            del sys.modules["scipy.linalg"]


def load(ties: bool = False) -> None:
    """Start numba and import the kernels now, as the pass's first block would: the merge times this apart
    (``merge/kernel_load_seconds``), so that its pass time is the streaming's alone."""
    _kernel()
    if ties:
        from finmerge.merge import fused_ties

        fused_ties._kernels()


@lru_cache(maxsize=1)
def _kernel():
    """Imported on first use: numba compiles it once per dtype combination (seconds) and caches the machine
    code on disk (``__pycache__``, or ``NUMBA_CACHE_DIR``), so later processes load it in milliseconds."""
    numba_target()
    from finmerge.merge.fused_kernel import weighted_sums

    return weighted_sums


def format_bits(dtype) -> type:
    """The integer type that carries a bf16 / fp16 / fp32 value's bits in the kernels: uint16 / int16 / uint32."""
    return FORMAT_BITS[dtypes.of(dtype).name]


def formatted(a: np.ndarray, dtype) -> np.ndarray:
    """The bits array ``a`` of a bf16 / fp16 / fp32 tensor (:attr:`~finmerge.models.dtypes.DType.bits`) as the
    array of :func:`format_bits` the kernels read and write (no copy)."""
    return a.view(format_bits(dtype))


def bits(t) -> np.ndarray:
    """The bits of a contiguous bf16 / fp16 / fp32 torch tensor as a uint16 / int16 / uint32 array of its shape
    (no copy): what the kernels read and write."""
    return formatted(dtypes.to_bits(t), t.dtype)


def _first_terms(coefs: np.ndarray) -> np.ndarray:
    nonzero = coefs != 0.0
    return np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 3).astype(np.int64)


class TwoThreads:
    """A pool of (at most) two threads for numba kernels that release the GIL; ``close`` when done."""

    def __init__(self, threads: int | None = None):
        self.threads = max(1, threads or min(2, os.cpu_count() or 1))
        self.pool = cf.ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class FusedWeightedSums(TwoThreads):
    """Runs the kernel over a block in two halves on two threads (the kernel releases the GIL)."""

    def __init__(self, threads: int | None = None):
        super().__init__(threads)
        self.kernel = _kernel()

    def __call__(self, x: dict[str, np.ndarray], coefs: list[tuple[float, float, float]], out: np.ndarray):
        """Fill ``out`` (K × n: uint16 for bf16 output, int16 for fp16, uint32 for fp32) from the blocks ``x``
        (their bits, :func:`formatted`); returns per-candidate ``(max|y−θ_cpt|, max|y−θ_inst|)``, or None if a
        value was not finite."""
        b, i, d = (x[r].reshape(-1) for r in ROLES)
        c = np.asarray(coefs, dtype=np.float32).reshape(-1, 3)
        first = _first_terms(c)
        n = b.size
        parts = self._split(n)
        diags = [np.zeros((c.shape[0], 3), np.uint32) for _ in parts]
        args = [(b, i, d, c, first, out, s, e, g) for (s, e), g in zip(parts, diags, strict=True)]
        if self.pool is None or len(parts) == 1:
            for a in args:
                self.kernel(*a)
        else:
            for fut in [self.pool.submit(self.kernel, *a) for a in args]:
                fut.result()
        diag = np.maximum.reduce(diags)
        if diag[:, 2].any() or (diag[:, :2] >= 0x7F800000).any():
            return None
        deltas = diag[:, :2].copy().view(np.float32)
        return [(float(deltas[k, 0]), float(deltas[k, 1])) for k in range(c.shape[0])]

    def _split(self, n: int) -> list[tuple[int, int]]:
        if n < 4 * TILE or self.threads == 1:
            return [(0, n)]
        step = math.ceil(n / self.threads / TILE) * TILE
        return [(s, min(n, s + step)) for s in range(0, n, step)]

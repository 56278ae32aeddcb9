"""The ties / dare kernels (finmerge/merge/fused_ties.py) write byte for byte what the torch path writes: the
output tensor and the max |Δ| of merge_report.json, on random tensors of several shapes, dtypes and
densities, on the cases where a top-k or a sign election can go wrong (zeros, ties at the threshold, signed
zeros, all-negative vectors, a sample that misses the threshold), and end to end on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finmerge.config import MergeConfig
from finmerge.merge import fused, fused_ties
from finmerge.merge.method_registry import METHODS
from finmerge.merge.methods import Scratch
from finmerge.merge.plan import TensorPlan
from finmerge.merge.stream import Buffers
from finmerge.merge.torch_block import torch_block
from finmerge.models import dtypes
from tests.helpers import with_bad_value
from tests.test_merge import EXTRA_TOKENS, _triplet
from tests.test_merge_fused import _content, _merge

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _inputs(shape, dtype, seed: int, kind: str = "randn") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    if kind == "randn":
        taus = [torch.randn(shape, generator=g) * 0.01 for _ in range(2)]
    elif kind == "grid":  # few distinct magnitudes: many ties at any threshold, many exact zeros
        taus = [torch.randint(-3, 4, shape, generator=g).float() * 2**-8 for _ in range(2)]
    elif kind == "negative":  # every entry of both vectors below the base, equal magnitudes included
        taus = [-(torch.randint(1, 5, shape, generator=g).float() * 2**-9) for _ in range(2)]
    elif kind == "zeros":  # a zero base with signed zeros, most entries unchanged
        base = torch.zeros(shape)
        base.view(-1)[::3] = -0.0
        taus = [
            torch.randn(shape, generator=g) * 0.01 * (torch.rand(shape, generator=g) < 0.2) for _ in range(2)
        ]
        taus[0].view(-1)[1::5] = -0.0
    else:
        raise ValueError(kind)
    return {
        "base": base.to(dtype),
        "instruct": (base + taus[0]).to(dtype),
        "domain": (base + taus[1]).to(dtype),
    }


def _both(method: str, cfg: MergeConfig, x: dict, out_dtype=torch.bfloat16, threads: int = 2):
    """(fused, torch): each ``(bits of y, max|y−θ_cpt|, max|y−θ_inst|)``; fused is None if it declined."""
    name = "model.layers.0.mlp.up_proj.weight"
    m = METHODS[method]
    params = m.tensor_params(cfg, {})
    shape = tuple(x["domain"].shape)
    plan = TensorPlan(name, "merged", shape, out_dtype, None, None, method=m, params=params)
    want = torch_block(plan, name, None, None, True, x, Scratch(), "t", torch.float32, {})
    kernel = fused_ties.FusedTies(threads=threads)
    try:
        got = _fused(kernel, name, params, x, out_dtype)
    finally:
        kernel.close()
    return (None if got is None else _bits(*got)), _bits(*want)


def _fused(kernel, name: str, params, x: dict[str, torch.Tensor], out_dtype):
    """The kernel on torch tensors, as the pass calls it (their bits in, the output's bits out, its blocks
    joined): ``(y, dc, di)`` with ``y`` a torch tensor again, or None."""
    bits = {r: fused.bits(v) for r, v in x.items()}
    blocks, got = _streamed(kernel, name, params, bits, out_dtype, block=None)
    if got is None:
        return None
    dt = dtypes.of(out_dtype)
    y = np.concatenate(blocks).reshape(x["domain"].shape)
    return (dtypes.to_torch(y.view(dt.bits), dt), *got)


def _bits(y: torch.Tensor, dc: float, di: float):
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[y.element_size()]
    return y.dtype, y.shape, y.contiguous().view(ints).clone(), dc, di


def _assert_same(got, want) -> None:
    assert got is not None, "the kernel declined finite inputs"
    assert got[:2] == want[:2]
    diff = int((got[2] != want[2]).sum())
    assert diff == 0, f"{diff} of {want[2].numel()} output values differ"
    assert got[3:] == want[3:], "max |Δ| differs"


CASES = {
    "ties": ("ties", MergeConfig(method="ties", density=0.5)),
    "ties-sparse": ("ties", MergeConfig(method="ties", density=0.1, alpha=1.0, beta=0.6)),
    "ties-dense-uneven": ("ties", MergeConfig(method="ties", density_instruct=0.9, density_domain=0.3)),
    "ties-negative-weight": ("ties", MergeConfig(method="ties", density=0.4, alpha=-0.5, beta=1.25)),
    "ties-rescale-lambda": ("ties", MergeConfig(method="ties", density=0.3, rescale=True, lambda_scale=1.5)),
    "ties-unnormalized": ("ties", MergeConfig(method="ties", density=0.7, normalize=False)),
    "ties-full": ("ties", MergeConfig(method="ties", density=1.0)),
    "ties-cancel": ("ties", MergeConfig(method="ties", density=0.5, alpha=1.0, beta=-1.0)),
    # divisors all powers of two (the kernel multiplies by their reciprocals), then one that is not (3)
    "ties-halves": ("ties", MergeConfig(method="ties", density=0.5, alpha=0.5, beta=0.5)),
    "ties-pow2-uneven": ("ties", MergeConfig(method="ties", density=0.6, alpha=2.0, beta=1.0)),
    "dare_ties": ("dare_ties", MergeConfig(method="dare_ties", density=0.5, seed=3)),
    "dare_ties-uneven": (
        "dare_ties",
        MergeConfig(method="dare_ties", density_instruct=0.3, density_domain=0.7, alpha=1.0, beta=0.6),
    ),
    "dare_ties-normalized": ("dare_ties", MergeConfig(method="dare_ties", density=0.2, normalize=True)),
    "dare_ties-no-rescale": ("dare_ties", MergeConfig(method="dare_ties", density=0.5, rescale=False)),
    "dare_ties-full": ("dare_ties", MergeConfig(method="dare_ties", density=1.0, lambda_scale=0.7)),
    "dare_linear": ("dare_linear", MergeConfig(method="dare_linear", density=0.4, normalize=True, beta=0.3)),
    "dare_linear-halved": ("dare_linear", MergeConfig(method="dare_linear", density=0.4, normalize=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(1,), (7,), (4099,), (301, 1001)], ids=str)
def test_kernel_equals_torch_path_on_random_tensors(case, dtype, shape):
    method, cfg = CASES[case]
    x = _inputs(shape, DTYPES[dtype], seed=sum(shape))
    _assert_same(*_both(method, cfg, x))


@pytest.mark.parametrize("kind", ["grid", "negative", "zeros"])
@pytest.mark.parametrize("case", ["ties", "ties-sparse", "ties-negative-weight", "ties-cancel", "dare_ties"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_kernel_equals_torch_path_on_ties_zeros_and_signs(kind, case, dtype):
    method, cfg = CASES[case]
    x = _inputs((513, 1030), DTYPES[dtype], seed=11, kind=kind)  # chunks end mid-row, tile tails
    _assert_same(*_both(method, cfg, x))


@pytest.mark.parametrize("out", ["bf16", "fp32", "fp16"])
@pytest.mark.parametrize("case", ["ties", "dare_ties", "dare_linear"])
def test_kernel_equals_torch_path_for_each_output_dtype(case, out):
    method, cfg = CASES[case]
    x = _inputs((257, 1031), torch.bfloat16, seed=5, kind="grid")
    _assert_same(*_both(method, cfg, x, out_dtype=DTYPES[out]))
    _assert_same(*_both(method, cfg, x, out_dtype=DTYPES[out], threads=1))


@pytest.mark.parametrize("sample", [16, 256, 4096])
def test_threshold_exact_whether_the_sample_brackets_it_or_misses(monkeypatch, sample):
    """A tiny sample misses the bracket now and then: the whole-vector selection then decides, equally."""
    monkeypatch.setattr(fused_ties, "BAND_MIN", 1000)
    monkeypatch.setattr(fused_ties, "SAMPLE", sample)
    for seed, kind in enumerate(["randn", "grid", "negative", "zeros"]):
        x = _inputs((97, 1013), torch.bfloat16, seed=seed, kind=kind)
        for density in (0.05, 0.5, 0.97):
            _assert_same(*_both("ties", MergeConfig(method="ties", density=density), x))


def test_divisors_that_are_powers_of_two_become_exact_reciprocals():
    """The normalisation divides by w0, w1, w0 + w1 (or 1 for 0) and the linear sum by α + β: the kernel
    multiplies by reciprocals only when all are powers of two, where that is exact (the cases above compare
    both ways to the torch path); the default α = β = 1 is such a case."""
    f = np.float32
    assert fused_ties._reciprocals([f(1), f(1), f(2), f(2)]) == [1, 1, 0.5, 0.5]
    assert fused_ties._reciprocals([f(2), f(-2), f(0), f(1)]) == [0.5, -0.5, 1, 1]
    assert fused_ties._reciprocals([f(2), f(1), f(3), f(3)]) is None
    assert fused_ties._reciprocals([f(1), f(0.6), f(1) + f(0.6), f(1.6)]) is None
    assert fused_ties._reciprocals([f(2.0**-140)]) is None  # 1/d would overflow float32


def test_ties_at_the_threshold_keep_the_lowest_indices(monkeypatch):
    """All |Δ| equal: the top-k is the first k entries, as torch's path keeps them; the kernel must agree
    on the cut inside the run of ties (the band pass and the whole-vector pass alike)."""
    n = 300_001
    base = torch.zeros(n, dtype=torch.bfloat16)
    x = {"base": base, "instruct": torch.full((n,), 0.5, dtype=torch.bfloat16)}
    x["domain"] = -x["instruct"]
    x["domain"][::7] = 0.5
    for band_min in (1 << 30, 1000):
        monkeypatch.setattr(fused_ties, "BAND_MIN", band_min)
        got, want = _both("ties", MergeConfig(method="ties", density=0.37, beta=0.8), x, torch.float32)
        _assert_same(got, want)
        kept = want[2].view(torch.float32) != 0
        assert 0 < int(kept.sum()) < n  # a real cut inside the ties


def test_l1_sums_are_torch_sums_where_proven_exact_and_left_to_torch_elsewhere():
    """dare's rescale divides two L1 norms that the torch path sums with torch (float64, its own order and
    threads): the kernel's own sum may stand in only where every order gives the same double."""
    from finmerge.merge import fused_ties_kernel as k

    rng = np.random.default_rng(0)
    seen = set()
    for case in range(12):
        n = int(rng.integers(1, 1 << 18))
        if case % 3 == 0:  # bf16-like deltas: few significant bits, exact
            v = (rng.standard_normal(n) * 0.01).astype(np.float32)
            v = (v.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        elif case % 3 == 1:  # fp32 over a wide range: order matters
            v = (rng.standard_normal(n) * 10.0 ** rng.uniform(-9, 1, n)).astype(np.float32)
        else:  # many zeros, a few large values
            v = (rng.standard_normal(n) * (rng.random(n) < 0.01) * 1e3).astype(np.float32)
        # fp32 inputs x = v over a zero base, so d = v; half the entries drawn to keep
        x, b = v.view(np.uint32), np.zeros(n, np.uint32)
        draws = rng.integers(0, 65536, n).astype(np.uint16)
        absd, absk, mask = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.uint8)
        args = (x, b, k.MASK, 0, -1, draws, 32768, mask)
        bad, td, tk, exact = k.l1_chunk(*args, absd, absk, True)
        assert bad < k.EXP
        assert np.array_equal(absd, np.abs(v)) and np.array_equal(mask, draws < 32768)
        assert np.array_equal(absk, np.where(draws < 32768, np.abs(v), np.float32(0)))
        # without the arrays (dare's own per-tile loops): the same verdict, and where exact the same sums (else
        # they may differ in the last bits with the order, and torch's are taken)
        got = k.l1_chunk(*args, absd[:0], absk[:0], False)
        assert got[3] == exact and (not exact or got[1:3] == (td, tk))
        seen.add(bool(exact))
        want = (float(torch.from_numpy(absd).sum(dtype=torch.float64)),
                float(torch.from_numpy(absk).sum(dtype=torch.float64)))  # fmt: skip
        if exact:
            assert (td, tk) == want, case
    assert seen == {True, False}  # both the proven sums and torch's are exercised


def test_dare_on_wide_range_fp32_takes_torch_sums_and_stays_identical():
    g = torch.Generator().manual_seed(4)
    shape = (600, 1001)  # three chunks, the last one short
    base = torch.randn(shape, generator=g) * torch.exp(torch.rand(shape, generator=g) * -20)
    x = {"base": base, "instruct": base + torch.randn(shape, generator=g) * 1e-3}
    x["domain"] = base - torch.randn(shape, generator=g) * torch.exp(torch.rand(shape, generator=g) * -15)
    for case in ("dare_ties", "dare_ties-uneven", "ties-rescale-lambda"):
        method, cfg = CASES[case]
        _assert_same(*_both(method, cfg, x, torch.float32))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])  # fp16 inputs are converted, not shifted
def test_non_finite_inputs_are_left_to_the_torch_path(dtype):
    x = _inputs((64, 64), DTYPES[dtype], seed=1)
    for role, value in (("instruct", float("inf")), ("base", float("nan")), ("domain", -float("inf"))):
        bad = {**x, role: x[role].clone()}
        bad[role][3, 5] = value
        for method in ("ties", "dare_ties"):
            kernel = fused_ties.FusedTies(threads=1)
            params = METHODS[method].tensor_params(MergeConfig(method=method, density=0.5), {})
            assert _fused(kernel, "w", params, bad, DTYPES[dtype]) is None, (role, method)
            kernel.close()


def test_fp16_inputs_upcast_every_value_exactly():
    """fp16 bits reach the kernels as int16 and are converted by the hardware: all 65,536 of them."""
    import numba

    from finmerge.merge import fused_ties_kernel as k
    from finmerge.merge.fused_kernel import exponent_bits, umax32, widened

    @numba.njit
    def upcast(src, dst):  # what every kernel does with an input value (widened), and its finiteness check
        bad = np.uint32(0)
        for j in range(src.size):
            dst[j] = widened(src[j])
            bad = umax32(bad, exponent_bits(dst[j]))
        return bad

    raw = np.arange(65536, dtype=np.uint16).view(np.int16)
    want = torch.from_numpy(raw.copy()).view(torch.float16).float().numpy().view(np.uint32)
    got = np.empty(raw.size, np.uint32)
    assert upcast(raw, got) == k.EXP  # Inf and NaN are among them
    finite = (want & 0x7F800000) != 0x7F800000
    assert np.array_equal(got[finite], want[finite])  # subnormals included
    # a NaN's payload may differ (the conversion quiets a signalling NaN): what matters is that it reads as
    # non-finite, which sends the tensor to the torch path
    assert ((got[~finite] & 0x7F800000) == 0x7F800000).all()
    assert np.array_equal(got[np.isinf(want.view(np.float32))], want[np.isinf(want.view(np.float32))])


# -- end to end: whole merges of tiny models, the kernels against FINMERGE_FUSED=0 ---------------------------
@pytest.fixture(scope="module")
def triplets(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("ties")
    bf16 = _triplet(root / "bf16", dtype=torch.bfloat16, committed=False)
    fp32 = _triplet(root / "fp32", committed=False)
    return {
        "bf16": bf16,
        "fp16-vocab": _triplet(
            root / "fp16", dtype=torch.float16, extra_tokens=EXTRA_TOKENS, committed=False
        ),
        # continual pretraining that kept fp32 master weights of a bf16 base: each input in its own format
        "bf16-fp32-cpt": {**bf16, "domain": fp32["domain"]},
    }


E2E = {
    "ties": MergeConfig(method="ties", density=0.5),
    "ties-to-fp32": MergeConfig(method="ties", density=0.3, alpha=0.8, dtype="float32"),
    "dare_ties": MergeConfig(method="dare_ties", density=0.5, seed=7),
    "dare_linear": MergeConfig(method="dare_linear", density=0.6, lambda_scale=0.9),
}


@pytest.mark.parametrize("case", sorted(E2E))
@pytest.mark.parametrize("inputs", ["bf16", "fp16-vocab", "bf16-fp32-cpt"])
def test_merge_with_the_kernels_writes_what_the_torch_path_writes(
    triplets, tmp_path, monkeypatch, inputs, case
):
    tri, cfg = triplets[inputs], E2E[case]
    monkeypatch.setenv("FINMERGE_FUSED", "1")  # tiny models: force the kernels
    got = _merge(tri, tmp_path / "fused", cfg)
    monkeypatch.setenv("FINMERGE_FUSED", "0")
    want = _merge(tri, tmp_path / "torch", cfg)
    assert want["metrics"]["merge/fused_share"] == 0.0
    assert got["metrics"]["merge/fused_share"] > 0.99  # all but the domain-only rows of an extended vocab
    a, b = _content(tmp_path / "fused"), _content(tmp_path / "torch")
    assert a["weights"].keys() == b["weights"].keys()
    assert all(a["weights"][k] == b["weights"][k] for k in a["weights"])
    assert a["report"] == b["report"]


def test_a_non_finite_input_is_named_with_the_kernels_on(triplets, tmp_path, monkeypatch):
    """The kernel declines the tensor and the torch path names the input, tensor and rows, as before."""
    from finmerge.merge.execute import MergeError

    monkeypatch.setenv("FINMERGE_FUSED", "1")
    src = triplets["bf16"]
    bad, name = with_bad_value(
        src["domain"], tmp_path / "domain", "mlp.down_proj.weight", float("nan"), (2, 3)
    )
    with pytest.raises(MergeError, match=rf"input domain tensor {name} .*1 NaN"):
        _merge({**src, "domain": str(bad)}, tmp_path / "out", MergeConfig(method="ties", density=0.5))
    assert not (tmp_path / "out").exists()


def test_candidates_in_one_pass_share_decisions_and_write_what_separate_merges_write(
    triplets, tmp_path, monkeypatch
):
    """A sweep's candidates differ in weights and λ, which the top-k thresholds and dare's masks and
    rescale do not depend on: one pass makes each tensor's decisions once per (method, densities, seed),
    and every candidate still writes the bytes a merge of its own writes."""
    from finmerge.merge.execute import merge_models_many

    monkeypatch.setenv("FINMERGE_FUSED", "1")
    made = []
    decide = fused_ties.FusedTies._decide

    def spy(self, name, params, *args, **kw):
        made.append((name, params.sparsification, params.density_instruct, params.seed))
        return decide(self, name, params, *args, **kw)

    monkeypatch.setattr(fused_ties.FusedTies, "_decide", spy)
    tri = triplets["bf16"]
    jobs = {
        "ties": MergeConfig(method="ties", density=0.5),
        "ties-weights": MergeConfig(method="ties", density=0.5, alpha=0.5, beta=1.25, lambda_scale=0.8),
        "ties-denser": MergeConfig(method="ties", density=0.7),
        "dare": MergeConfig(method="dare_ties", density=0.5, seed=3),
        "dare-weights": MergeConfig(method="dare_ties", density=0.5, seed=3, alpha=0.75),
        "dare-other-seed": MergeConfig(method="dare_ties", density=0.5, seed=4),
    }
    merge_models_many(
        tri["base"], tri["instruct"], tri["domain"],
        [(str(tmp_path / "many" / k), cfg) for k, cfg in jobs.items()], str(tmp_path / "st"),
    )  # fmt: skip
    per_tensor = {}
    for name, *decision in made:
        per_tensor.setdefault(name, []).append(tuple(decision))
    assert per_tensor and all(len(d) == 4 == len(set(d)) for d in per_tensor.values()), per_tensor
    monkeypatch.setenv("FINMERGE_FUSED", "0")  # each candidate on its own, through the torch path
    for key, cfg in jobs.items():
        _merge(tri, tmp_path / "one" / key, cfg)
        assert _content(tmp_path / "many" / key) == _content(tmp_path / "one" / key), key


@pytest.mark.parametrize("n", [1, 63, 2048, 2049, 300_001])
def test_magnitude_band_collects_the_band_in_index_order_and_counts_above(n):
    """The band kernel against numpy: every |Δ| in [lo, hi] with its index, in order, the count above hi, a
    short last tile (no stale flags), and -1 when the band outgrows its buffer."""
    from finmerge.merge import fused_ties_kernel as k

    rng = np.random.default_rng(n)
    b = (rng.standard_normal(n) * 0.02).astype(np.float32)
    x = (b + rng.standard_normal(n) * 0.01).astype(np.float32)
    d = np.abs(x - b)
    lo, hi = np.quantile(d, [0.3, 0.5]).astype(np.float32)
    want = np.flatnonzero((d >= lo) & (d <= hi))
    values, index = np.empty(n, np.uint32), np.empty(n, np.int64)
    above, nb, bad = k.magnitude_band(x.view(np.uint32), b.view(np.uint32), lo.view(np.uint32),
                                      hi.view(np.uint32), values, index)  # fmt: skip
    assert bad < k.EXP and above == int(np.count_nonzero(d > hi)) and nb == want.size
    assert np.array_equal(index[:nb], want) and np.array_equal(values[:nb], d[want].view(np.uint32))
    if want.size > 1:  # a buffer one short: the band did not fit
        small = values[: want.size - 1], index[: want.size - 1]
        assert k.magnitude_band(x.view(np.uint32), b.view(np.uint32), lo.view(np.uint32),
                                hi.view(np.uint32), *small)[1] == -1  # fmt: skip


@pytest.mark.parametrize("n", [63, 2049, 300_001])
def test_both_vectors_bands_in_one_pass_are_each_vectors_own(n):
    """magnitude_bands (both task vectors, the base read once) against magnitude_band of each: counts, bands
    in index order, a band that outgrows its row (-1) while the other fits, and a non-finite input seen."""
    from finmerge.merge import fused_ties_kernel as k

    rng = np.random.default_rng(n)
    b = (rng.standard_normal(n) * 0.02).astype(np.float32)
    xs = [(b + rng.standard_normal(n) * s).astype(np.float32) for s in (0.01, 0.003)]
    brackets = [
        np.quantile(np.abs(x - b), q).astype(np.float32)
        for x, q in zip(xs, ([0.3, 0.5], [0.9, 0.95]), strict=True)
    ]
    lo = np.array([q[0] for q in brackets]).view(np.uint32)
    hi = np.array([q[1] for q in brackets]).view(np.uint32)
    u = [a.view(np.uint32) for a in (*xs, b)]
    own = []
    for i in range(2):
        values, index = np.empty(n, np.uint32), np.empty(n, np.int64)
        above, nb, _ = k.magnitude_band(u[i], u[2], lo[i], hi[i], values, index)
        own.append((above, nb, values[:nb], index[:nb]))
    for cap in (n, max(1, own[0][1] - 1)):  # all fit; vector 0's band one short
        values, index, found = (
            np.empty((2, cap), np.uint32),
            np.empty((2, cap), np.int64),
            np.zeros((2, 2), np.int64),
        )
        assert k.magnitude_bands(u[0], u[1], u[2], lo, hi, values, index, found) < k.EXP
        for i in range(2):
            above, nb, v, ix = own[i]
            fits = nb <= cap
            assert tuple(found[i]) == (above, nb if fits else -1), (cap, i)
            if fits:
                assert np.array_equal(values[i, :nb], v) and np.array_equal(index[i, :nb], ix)
    xs[1][n // 2] = np.inf
    found = np.zeros((2, 2), np.int64)
    bufs = np.empty((2, n), np.uint32), np.empty((2, n), np.int64)
    assert k.magnitude_bands(u[0], xs[1].view(np.uint32), u[2], lo, hi, *bufs, found) >= k.EXP


# -- the output streamed to the writer in blocks (the pass's way: at most STREAM_BLOCK values a buffer) -----
def _streamed(kernel, name, params, bits: dict, out_dtype, block: int | None):
    """``(the blocks written, in order, as copies (the kernel reuses their buffers); the call's result)``."""
    blocks = []
    got = kernel(
        name, params, bits, dtypes.of(out_dtype), Buffers(), "s", lambda y: blocks.append(y.copy()), block
    )
    return blocks, got


@pytest.mark.parametrize("case", ["ties", "ties-full", "ties-rescale-lambda", "dare_ties", "dare_linear"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_streamed_blocks_are_the_whole_tensor_output(case, dtype):
    """Blocks of whole tiles, each split between the two threads, with a short last one: together the bytes
    and max |Δ| of the whole-tensor call."""
    method, cfg = CASES[case]
    x = _inputs((301, 1001), DTYPES[dtype], seed=11)
    bits = {r: fused.bits(v) for r, v in x.items()}
    params = METHODS[method].tensor_params(cfg, {})
    kernel = fused_ties.FusedTies(threads=2)
    try:
        (y,), whole = _streamed(kernel, "w", params, bits, DTYPES[dtype], block=None)  # one block
        blocks, got = _streamed(kernel, "w", params, bits, DTYPES[dtype], block=5000)  # 4,096 a block
    finally:
        kernel.close()
    assert got == whole and kernel.written == y.size
    assert [b.size for b in blocks] == [4096] * 73 + [y.size - 73 * 4096]
    assert np.array_equal(np.concatenate(blocks), y.reshape(-1))


@pytest.mark.parametrize("case, written", [("ties", 0), ("ties-full", 2 * 4096)])
def test_a_value_not_finite_stops_the_stream_at_its_block(case, written):
    """Decisions that read every value (top-k) find it before anything is written; a merge without them
    (density 1) in the block that holds it, after the blocks before: the caller knows how many were."""
    method, cfg = CASES[case]
    x = _inputs((301, 1001), torch.bfloat16, seed=12)
    x["domain"].view(-1)[2 * 4096 + 17] = float("inf")
    kernel = fused_ties.FusedTies(threads=2)
    try:
        params = METHODS[method].tensor_params(cfg, {})
        blocks, got = _streamed(
            kernel, "w", params, {r: fused.bits(v) for r, v in x.items()}, torch.bfloat16, 4096
        )
    finally:
        kernel.close()
    assert got is None and kernel.written == written == sum(b.size for b in blocks)


@pytest.mark.parametrize("case", ["ties", "dare_ties"])
def test_merge_streaming_several_blocks_a_tensor_writes_what_the_torch_path_writes(
    triplets, tmp_path, monkeypatch, case
):
    tri, cfg = triplets["bf16"], E2E[case]
    monkeypatch.setenv("FINMERGE_FUSED", "1")
    monkeypatch.setattr(fused_ties, "STREAM_BLOCK", 2048)  # one tile a block: 4 blocks an MLP weight
    got = _merge(tri, tmp_path / "fused", cfg)
    monkeypatch.setenv("FINMERGE_FUSED", "0")
    _merge(tri, tmp_path / "torch", cfg)
    assert got["metrics"]["merge/fused_share"] == 1.0
    assert _content(tmp_path / "fused") == _content(tmp_path / "torch")


def test_a_value_not_finite_in_a_later_block_is_named_and_nothing_is_committed(
    triplets, tmp_path, monkeypatch
):
    """Blocks before it are already with the writer: the torch path still names it and raises, and the
    output folder is never committed."""
    from finmerge.merge.execute import MergeError

    monkeypatch.setenv("FINMERGE_FUSED", "1")
    src = triplets["bf16"]
    bad, name = with_bad_value(
        src["domain"], tmp_path / "domain", "mlp.down_proj.weight", float("nan"), (40, 5)
    )
    cfg = MergeConfig(method="ties", density=1.0)  # no decisions: the combination meets it first
    monkeypatch.setattr(fused_ties, "STREAM_BLOCK", 2048)
    with pytest.raises(MergeError, match=rf"input domain tensor {name} .*1 NaN"):
        _merge({**src, "domain": str(bad)}, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()

"""ties / dare / slerp and per-tensor rules: the arithmetic against mergekit's own functions, whole merges
against `mergekit` runs on the same tiny models, and the properties finmerge adds (seeding, exact top-k)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mergekit  # noqa: F401  (a test dependency: the reference these tests compare with)
import pytest
import torch
import yaml
from safetensors.torch import load_file

from finmerge.cli import main
from finmerge.config import MergeConfig
from finmerge.merge import methods as mm
from finmerge.merge.execute import merge_models
from finmerge.merge.mergekit import MergekitConfigError, from_mergekit
from finmerge.merge.method_registry import METHODS
from tests.test_merge import _triplet


def _weights(folder: str | Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return _triplet(tmp_path_factory.mktemp("tri"))


# -- the arithmetic, tensor by tensor --------------------------------------------------------------------
def test_top_k_threshold_is_exact_on_big_tensors_with_ties():
    """The sampled bracket + one chunked pass picks the same threshold as a full kthvalue, and keeps k."""
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(3_000_000)
    x = (torch.randn(3_000_000, generator=g) * 64).round() + 0.5  # many equal magnitudes, no zeros
    for density in (1e-6, 0.3, 0.5, 0.999):
        kept = mm.decide_kept(base, x, density, "magnitude", False, 0)
        k = max(1, int(density * x.numel()))
        assert kept.threshold == float(torch.kthvalue(x.abs(), x.numel() - k + 1).values)
        assert int(torch.count_nonzero(mm.sparsify(x, density, "magnitude", False))) == k


def test_magnitude_sparsify_keeps_exactly_the_top_k():
    g = torch.Generator().manual_seed(1)
    d = (torch.randn(2049, 700, generator=g) * 8).round() + 0.5  # many ties at the threshold, no zeros
    kept = mm.sparsify(d, 0.3, "magnitude", False)
    m = kept != 0
    assert int(m.sum()) == int(0.3 * d.numel())
    assert d.abs()[m].min() >= d.abs()[~m].max()
    tied = d.abs() == d.abs()[m].min()
    kept_tied = torch.nonzero((m & tied).flatten()).flatten()
    dropped_tied = torch.nonzero((~m & tied).flatten()).flatten()
    assert kept_tied.max() < dropped_tied.min()  # among equal magnitudes the lowest indices are kept


def test_sparsify_and_consensus_match_mergekit_functions():
    from mergekit.merge_methods.generalized_task_arithmetic import get_mask
    from mergekit.merge_methods.slerp import slerp
    from mergekit.sparsify import RescaleNorm, magnitude

    g = torch.Generator().manual_seed(2)
    base, a, b = (torch.randn(64, 48, generator=g) for _ in range(3))
    # magnitude top-k, with and without L1 rescale (no ties in continuous data)
    for rescale in (False, True):
        ours = mm.sparsify(a - base, 0.4, "magnitude", rescale)
        ref = magnitude(a - base, 0.4, RescaleNorm.l1 if rescale else None)
        assert torch.allclose(ours, ref, atol=1e-6)
    # full TIES on one tensor
    da, db = (
        mm.sparsify(a - base, 0.5, "magnitude", False, None),
        mm.sparsify(b - base, 0.5, "magnitude", False, None),
    )
    w = torch.tensor([1.0, 0.6]).view(2, 1, 1)
    deltas = torch.stack([da, db]) * w
    mask = get_mask(deltas, "sum")
    want = base + (deltas * mask).sum(0) / torch.where((w * mask).sum(0) == 0, 1.0, (w * mask).sum(0))
    got = mm.generalized_task_arithmetic(
        base, [a, b], [mm.VectorSpec(1.0, 0.5), mm.VectorSpec(0.6, 0.5)],
        sparsification="magnitude", consensus=True, normalize=True, rescale=False,
    )  # fmt: skip
    assert torch.allclose(got, want, atol=1e-6)
    # slerp of whole tensors (mergekit interpolates each batched tensor as one vector); parallel → linear
    for other in (b, a * 2.0):
        want = slerp(torch.tensor([0.3]), a.unsqueeze(0), other.unsqueeze(0)).squeeze(0)
        assert torch.allclose(mm.slerp_tensor(0.3, a, other), want, atol=1e-6)


def test_dare_is_seeded_per_tensor_and_keeps_the_l1_norm():
    g = torch.Generator().manual_seed(3)
    d = torch.randn(1000, 700, generator=g)  # several chunks
    one = mm.sparsify(d.clone(), 0.3, "random", True, mm.tensor_seed(7, "w", "instruct"))
    same = mm.sparsify(d.clone(), 0.3, "random", True, mm.tensor_seed(7, "w", "instruct"))
    other = mm.sparsify(d.clone(), 0.3, "random", True, mm.tensor_seed(8, "w", "instruct"))
    assert torch.equal(one, same) and not torch.equal(one, other)
    kept = float((one != 0).float().mean())
    assert abs(kept - 0.3) < 0.01
    assert torch.isclose(one.abs().sum(), d.abs().sum(), rtol=1e-5)


# -- dare below density 1, dare_linear and λ, against mergekit 0.1.5 ---------------------------------------
# Random masks differ between implementations, so dare is compared by its properties (kept share, rescale,
# sign consensus) and, with our masks handed to mergekit in place of its draws, value for value.
DARE_SHAPES = ((600, 1000), (48, 64), (64,))  # several CHUNKs, one chunk, a norm vector
SIGMAS = 5.0
MK_ULPS = 16.0  # mergekit sums |τ| in float32 for its L1 rescale: a few ulps off the exact factor


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """The float32 spacing at |x| (x nonzero; any float dtype, the result in x's dtype)."""
    return torch.ldexp(torch.ones_like(x), torch.frexp(x).exponent - 24)


def _check_dare_drop(
    tau: torch.Tensor, kept: torch.Tensor, density: float, who: str, max_ulps: float = 1.0
) -> torch.Tensor:
    """``kept`` is a dare drop of task vector ``tau`` (no zero entries) at ``density``, as mergekit 0.1.5
    defines it; returns the keep mask (the non-zero entries).

    (a) the kept share is the density within SIGMAS binomial standard deviations (plus our 2⁻¹⁶ density
    resolution); (b) every kept entry is fp32(τ·s) or its fp32 neighbour (1 ulp), s = ‖τ‖₁/‖kept τ‖₁
    (mergekit 0.1.5's ``RescaleNorm.l1``: the L1 norm is restored, which is 1/density in expectation, not
    exactly), every other entry is 0; and 1/s, the L1 share kept, is the density within SIGMAS standard
    deviations. ``max_ulps``: more for mergekit, whose float32 L1 sums are a few ulps off."""
    t, k = tau.reshape(-1).double(), kept.reshape(-1).double()
    assert kept.dtype == torch.float32 and bool((t != 0).all())
    n, mask = t.numel(), k != 0
    share = float(mask.double().mean())
    tol = SIGMAS * math.sqrt(density * (1 - density) / n) + 2**-16
    assert abs(share - density) <= tol, (who, n, share, density, tol)
    l1, l2 = float(t.abs().sum()), float(t.square().sum())
    kept_l1 = float((t.abs() * mask).sum())
    l1_tol = SIGMAS * math.sqrt(density * (1 - density) * l2) / l1 + 2**-16
    assert abs(kept_l1 / l1 - density) <= l1_tol, (who, n, kept_l1 / l1, density, l1_tol)
    want = (tau.reshape(-1)[mask.view(-1)].double() * (l1 / kept_l1)).float()  # τ·s correctly rounded
    got = kept.reshape(-1)[mask.view(-1)]
    ulps = (got - want).abs() / _ulp(torch.minimum(got.abs(), want.abs()))
    assert float(ulps.max()) <= max_ulps, (who, n, float(ulps.max()))
    return mask.view(kept.shape)


def _mergekit_merge(
    method: str, base, tuned, weights, densities, masks=None, monkeypatch=None, **shared
) -> torch.Tensor:
    """mergekit 0.1.5's own merge of one tensor (its ``GeneralizedTaskArithmeticMerge``); with ``masks``, its
    ``torch.bernoulli`` draws are replaced by these, in model order (each call checked to ask for the
    model's density)."""
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import TensorGroup

    ids = [f"m{i}" for i in range(len(tuned))]
    if masks is not None:
        queue = list(zip(masks, densities, strict=True))

        def drawn(p: torch.Tensor) -> torch.Tensor:
            mask, density = queue.pop(0)
            assert p.shape == mask.shape and bool((p == torch.tensor(density, dtype=p.dtype)).all())
            return mask.to(p.dtype)

        monkeypatch.setattr(torch, "bernoulli", drawn)
    torch.manual_seed(0)
    group = TensorGroup.from_tensors([base, *tuned], ids=["base", *ids], base_index=0)
    params = {
        "weight": dict(zip(ids, weights, strict=True)),
        "density": dict(zip(ids, densities, strict=True)),
    }
    (out,) = registry.get(method)([group], parameters={**params, **shared}, dtype=torch.float32)
    if masks is not None:
        assert not queue  # every mask was drawn: no density-1 shortcut or skipped model
        monkeypatch.undo()
    return out


def _ours(method: str, base, tuned, weights, densities, seeds, lambda_scale=1.0, normalize=None):
    m = METHODS[method]
    return mm.generalized_task_arithmetic(
        base, tuned, [mm.VectorSpec(w, d) for w, d in zip(weights, densities, strict=True)],
        sparsification=m.sparsification, consensus=m.consensus, rescale=m.default_rescale,
        normalize=m.default_normalize if normalize is None else normalize,
        lambda_scale=lambda_scale, seeds=seeds,
    )  # fmt: skip


@pytest.mark.parametrize("density", [0.3, 0.7])
def test_dare_drop_keeps_the_density_share_and_rescales_like_mergekit(density):
    """(a) + (b) on the merge's own path (one task vector, zero base: the output is the dropped vector), for
    finmerge and, as the reference that the criteria fit, mergekit's ``bernoulli``; with finmerge's mask,
    mergekit's L1 rescale gives the same values."""
    from mergekit.sparsify import RescaleNorm, bernoulli, rescaled_masked_tensor

    g = torch.Generator().manual_seed(10)
    for shape in DARE_SHAPES:
        tau = torch.randn(shape, generator=g)
        zero = torch.zeros(shape)
        seed = mm.tensor_seed(7, f"t{len(shape)}", "instruct")
        for method in ("dare_ties", "dare_linear"):
            ours = _ours(method, zero, [tau], [1.0], [density], [seed])
            mask = _check_dare_drop(tau, ours, density, f"finmerge {method} {shape}")
            assert torch.equal(ours, mm.sparsify(tau, density, "random", True, seed))
        torch.manual_seed(0)
        _check_dare_drop(tau, bernoulli(tau, density, RescaleNorm.l1), density, f"mergekit {shape}", MK_ULPS)
        ref = rescaled_masked_tensor(tau, mask.float(), RescaleNorm.l1)  # finmerge's mask, mergekit's rescale
        assert torch.equal(ref != 0, mask)
        assert float(((ours - ref).abs() / _ulp(ref.abs().clamp_min(1e-30))).max()) <= MK_ULPS


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_dare_below_density_1_elects_signs_like_ties(method):
    """(c): with zero base the merge is Σ of the kept weighted deltas that agree with the elected sign (that
    of their sum, + on 0): both kept and agreeing → the sum; disagreeing → only the larger one (the other is
    excluded), one kept → it; none → 0. dare_linear keeps the sum everywhere. The two models' masks are
    drawn independently (overlap ≈ d₁·d₂), as mergekit draws them."""
    g = torch.Generator().manual_seed(11)
    shape, densities, weights = (600, 1000), (0.3, 0.7), (1.0, 0.6)
    a, b = (torch.randn(shape, generator=g) for _ in range(2))
    seeds = [mm.tensor_seed(3, "w", r) for r in ("instruct", "domain")]
    out = _ours(method, torch.zeros(shape), [a, b], weights, densities, seeds)
    da, db = (
        mm.sparsify(x, d, "random", True, s).mul_(w)
        for x, d, s, w in zip((a, b), densities, seeds, weights, strict=True)
    )
    ka, kb = da != 0, db != 0
    overlap, p = float((ka & kb).double().mean()), densities[0] * densities[1]
    assert abs(overlap - p) <= SIGMAS * math.sqrt(p * (1 - p) / ka.numel()) + 2**-15
    total = da + db
    if method == "dare_linear":
        assert torch.equal(out, total)
        return
    elected = torch.where(total >= 0, 1.0, -1.0)
    assert bool((out.sign() * elected >= 0).all())  # never against the elected sign
    agree = ka & kb & (da.sign() == db.sign())
    disagree = ka & kb & (da.sign() != db.sign())
    assert float(disagree.double().mean()) > 0.05  # the consensus has work to do
    assert torch.equal(out[agree], total[agree])
    winner = torch.where(da.abs() > db.abs(), da, db)
    assert torch.equal(out[disagree], winner[disagree])
    assert bool((out[disagree].sign() == elected[disagree]).all())
    assert torch.equal(out[ka & ~kb], da[ka & ~kb]) and torch.equal(out[kb & ~ka], db[kb & ~ka])
    assert bool((out[~ka & ~kb] == 0).all())


def _close(got: torch.Tensor, want: torch.Tensor, scale: float) -> None:
    """fp32 agreement: the rescale factors (fp64 vs fp32 L1 sums) may differ by an ulp or two, so allow a
    few ulps of the delta's size (``scale``) plus one of the result."""
    tol = 4 * torch.finfo(torch.float32).eps * scale + _ulp(want.abs().clamp_min(1e-30))
    assert bool(((got - want).abs() <= tol).all()), float((got - want).abs().max())


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("shared", [{}, {"lambda": 0.6, "normalize": True}], ids=["defaults", "lambda_norm"])
def test_dare_below_density_1_equals_mergekit_with_the_same_masks(method, shared, monkeypatch):
    """(d): finmerge's masks (the non-zero entries of each dropped vector) handed to mergekit in place of its
    draws: the merged tensor is mergekit's to fp32 tolerance, at densities 0.3 / 0.7 and different weights."""
    g = torch.Generator().manual_seed(12)
    for shape in DARE_SHAPES:
        base, a, b = (torch.randn(shape, generator=g) for _ in range(3))
        a, b = base + 0.02 * a, base + 0.02 * b  # deltas small against the base, as in a fine-tune
        densities, weights = (0.3, 0.7), (1.0, 0.6)
        seeds = [mm.tensor_seed(5, "w", r) for r in ("instruct", "domain")]
        masks = [
            (mm.sparsify(x - base, d, "random", True, s) != 0).float()
            for x, d, s in zip((a, b), densities, seeds, strict=True)
        ]
        ref = _mergekit_merge(method, base, [a, b], weights, densities, masks, monkeypatch, **shared)
        got = _ours(method, base, [a, b], weights, densities, seeds,
                    lambda_scale=shared.get("lambda", 1.0), normalize=shared.get("normalize"))  # fmt: skip
        _close(got, ref, scale=float((a - base).abs().max() + (b - base).abs().max()) / 0.3)
        assert not torch.equal(got, base)


@pytest.mark.parametrize(
    "method,density", [("ties", 1.0), ("ties", 0.5), ("dare_ties", 1.0), ("dare_linear", 1.0)]
)
@pytest.mark.parametrize("lam", [0.5, 1.7])
def test_lambda_scale_is_mergekits_lambda(method, density, lam):
    """(e): λ (``lambda_scale``, mergekit's ``lambda``) multiplies the merged delta after the normalisation:
    the same tensor as mergekit's at λ, and with zero base exactly λ times the λ=1 merge (as in mergekit)."""
    g = torch.Generator().manual_seed(13)
    base, a, b = (torch.randn(64, 48, generator=g) for _ in range(3))
    weights, densities, seeds = (1.0, 0.6), (density, density), [1, 2]
    got = _ours(method, base, [a, b], weights, densities, seeds, lambda_scale=lam)
    ref = _mergekit_merge(method, base, [a, b], weights, densities, **{"lambda": lam})
    _close(got, ref, scale=float((a - base).abs().max() + (b - base).abs().max()))
    zero = torch.zeros_like(base)
    one = _ours(method, zero, [a, b], weights, densities, seeds)
    scaled = _ours(method, zero, [a, b], weights, densities, seeds, lambda_scale=lam)
    assert torch.equal(scaled, one * lam) and not torch.equal(scaled, one)
    mk_one = _mergekit_merge(method, zero, [a, b], weights, densities)
    assert torch.equal(
        _mergekit_merge(method, zero, [a, b], weights, densities, **{"lambda": lam}), mk_one * lam
    )


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_a_zero_weighted_sum_elects_plus_like_mergekit(method):
    """The sign election on exact cancellation (w₁·τ₁ = −w₂·τ₂): mergekit elects + (sum ≥ 0), so only the
    positive entries are kept; continuous random data never hits this case."""
    tau = torch.randn(64, 48, generator=torch.Generator().manual_seed(14))
    zero = torch.zeros_like(tau)  # τ₁ = τ, τ₂ = −2τ, weights 1 and 0.5: the weighted deltas cancel exactly
    got = _ours(method, zero, [tau, -2 * tau], (1.0, 0.5), (1.0, 1.0), [1, 2])
    ref = _mergekit_merge(method, zero, [tau, -2 * tau], (1.0, 0.5), (1.0, 1.0))
    divisor = torch.where(tau > 0, 1.0, 0.5) if method == "ties" else 1.0  # ties: ÷ the agreeing weight
    assert torch.equal(ref, tau.abs() / divisor)  # the + one of τ and −τ kept
    assert torch.equal(got, ref)


# -- whole merges against mergekit ------------------------------------------------------------------------
CASES = {
    "task_arithmetic": {"parameters": {}, "models": [{"weight": 1.0}, {"weight": 0.8}]},
    "ties": {"parameters": {"normalize": True}, "models": [{"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.3}]},
    "dare_ties": {"parameters": {}, "models": [{"weight": 1.0, "density": 1.0}, {"weight": 0.5, "density": 1.0}]},
    "linear": {"parameters": {}, "models": [{"weight": 0.3}, {"weight": 0.7}]},
    # λ (mergekit's `lambda`, finmerge's lambda_scale) through the mergekit YAML and the CLI; dare at density 1
    "ties_lambda": {"method": "ties", "parameters": {"lambda": 1.5}, "models": [{"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.3}]},
    "dare_ties_lambda": {"method": "dare_ties", "parameters": {"lambda": 0.6, "normalize": True}, "models": [{"weight": 1.0, "density": 1.0}, {"weight": 0.5, "density": 1.0}]},
    "dare_linear": {"parameters": {"lambda": 0.7}, "models": [{"weight": 1.0, "density": 1.0}, {"weight": 0.5, "density": 1.0}]},
    "slerp": {"parameters": {"t": [{"filter": "self_attn", "value": 0.2}, {"value": 0.6}]}, "models": [{}]},
}  # fmt: skip


def _mergekit_yaml(case_name: str, tri: dict, dtype: str) -> dict:
    case = CASES[case_name]
    method = case.get("method", case_name)
    others = [tri["domain"]] if method == "slerp" else [tri["instruct"], tri["domain"]]
    models = [
        {"model": m, "parameters": p} if p else {"model": m}
        for m, p in zip(others, case["models"], strict=True)
    ]
    doc = {"merge_method": method, "base_model": tri["instruct"] if method == "slerp" else tri["base"],
           "models": models, "dtype": "float32", "out_dtype": dtype, "tokenizer": {"source": tri["domain"]}}  # fmt: skip
    if case["parameters"]:
        doc["parameters"] = case["parameters"]
    if method == "linear":  # mergekit's linear has no base model (it would need a weight)
        del doc["base_model"]
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_same_tensors_as_mergekit(case, fp32, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    doc = _mergekit_yaml(case, fp32, "bfloat16")
    (tmp_path / "mk.yaml").write_text(yaml.safe_dump(doc))
    run_merge(MergeConfiguration.model_validate(doc), str(tmp_path / "mk"), MergeOptions(random_seed=0))
    assert main(["merge", "--config", str(tmp_path / "mk.yaml"), "--out", str(tmp_path / "ours"),
                 "--set", f"storage.staging_dir={tmp_path / 'st'}"]) == 0  # fmt: skip
    ref, got = _weights(tmp_path / "mk"), _weights(tmp_path / "ours")
    assert ref.keys() == got.keys()
    for name in ref:
        assert got[name].dtype == torch.bfloat16 == ref[name].dtype
        a, b = got[name].float(), ref[name].float()
        # one rounding of the same fp32 value, or of two fp32 values a few ulps apart: ≤ 1 bf16 ulp
        ulp = torch.finfo(torch.bfloat16).eps * torch.maximum(a.abs(), b.abs()).clamp_min(1e-30)
        assert bool(((a - b).abs() <= ulp).all()), (name, float((a - b).abs().max()))
        assert float((a != b).float().mean()) < 0.01, name  # nearly all bit-identical


def test_mergekit_yaml_maps_roles_and_parameters(fp32):
    doc = _mergekit_yaml("ties", fp32, "bfloat16")
    doc["models"] = doc["models"][::-1]  # order does not matter: the tokenizer source is the domain model
    cfg, roles = from_mergekit(doc)
    assert roles == {"base": fp32["base"], "instruct": fp32["instruct"], "domain": fp32["domain"]}
    assert (cfg.method, cfg.alpha, cfg.beta, cfg.density_instruct, cfg.density_domain, cfg.dtype) == (
        "ties", 1.0, 0.7, 0.5, 0.3, "bfloat16")  # fmt: skip
    slerp, roles = from_mergekit(_mergekit_yaml("slerp", fp32, "float32"))
    assert (
        slerp.t == 0.6 and slerp.rules[0].t == 0.2 and roles["instruct"] == roles["base"] == fp32["instruct"]
    )
    for bad, why in (
        ({**doc, "merge_method": "model_stock"}, "not supported"),
        ({**doc, "slices": []}, "slices"),
        ({**doc, "models": doc["models"][:1]}, "2 model"),
        (
            {**doc, "models": [{**doc["models"][0], "parameters": {"weight": [0.1, 0.9]}}, doc["models"][1]]},
            "scalar",
        ),
    ):
        with pytest.raises(MergekitConfigError, match=why):
            from_mergekit(bad)


def test_ties_dare_and_rules_in_a_streamed_merge(fp32, tmp_path):
    st = str(tmp_path / "st")
    cfg = MergeConfig(
        method="dare_ties", density=0.5, seed=3, dtype="float32",
        rules=[{"pattern": "embed_tokens", "source": "instruct"},
               {"pattern": r"norm\.weight$", "method": "task_arithmetic", "alpha": 0.0, "beta": 0.0}],
    )  # fmt: skip
    merge_models(fp32["base"], fp32["instruct"], fp32["domain"], str(tmp_path / "a"), cfg, st)
    merge_models(fp32["base"], fp32["instruct"], fp32["domain"], str(tmp_path / "b"), cfg, st)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # seeded: reproducible
    inst, base = _weights(fp32["instruct"]), _weights(fp32["base"])
    assert torch.equal(wa["model.embed_tokens.weight"], inst["model.embed_tokens.weight"])
    norms = [k for k in wa if k.endswith("norm.weight")]
    assert norms and all(torch.equal(wa[k], base[k]) for k in norms)
    report = json.loads((tmp_path / "a" / "merge_report.json").read_text())
    kinds = {t["name"]: (t["kind"], t["method"], t["rule"]) for t in report["tensors"]}
    assert kinds["model.embed_tokens.weight"] == ("taken", "instruct", "embed_tokens")
    assert kinds["lm_head.weight"][:2] == ("merged", "dare_ties")
    card = (tmp_path / "a" / "README.md").read_text()
    assert "dare_ties" in card and '"seed": 3' in card
    # a different seed drops different entries
    c = merge_models(fp32["base"], fp32["instruct"], fp32["domain"], str(tmp_path / "c"),
                     cfg.model_copy(update={"seed": 4}), st)  # fmt: skip
    assert not torch.equal(_weights(c["uri"])["lm_head.weight"], wa["lm_head.weight"])


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_streamed_dare_merge_below_density_1_equals_mergekit_with_the_same_masks(
    method, fp32, tmp_path, monkeypatch
):
    """A whole streamed merge at densities 0.3 / 0.7: every tensor's drops pass (a) + (b) (masks re-drawn
    from ``tensor_seed(seed, name, role)``, so the config's per-model densities and seed reach each tensor),
    and mergekit given those masks, the weights and λ merges every tensor to the same values (d)."""
    cfg = MergeConfig(method=method, alpha=1.0, beta=0.6, density_instruct=0.3, density_domain=0.7,
                      lambda_scale=0.8, seed=5, dtype="float32")  # fmt: skip
    merge_models(
        fp32["base"], fp32["instruct"], fp32["domain"], str(tmp_path / "out"), cfg, str(tmp_path / "st")
    )
    got = _weights(tmp_path / "out")
    base, inst, dom = (_weights(fp32[r]) for r in ("base", "instruct", "domain"))
    assert got.keys() == base.keys()
    for name, merged in got.items():
        b, xs, masks = base[name], [inst[name], dom[name]], []
        for x, role, density in zip(xs, ("instruct", "domain"), (0.3, 0.7), strict=True):
            kept = mm.sparsify(x - b, density, "random", True, mm.tensor_seed(5, name, role))
            masks.append(_check_dare_drop(x - b, kept, density, f"{name} {role}").float())
        ref = _mergekit_merge(method, b, xs, (1.0, 0.6), (0.3, 0.7), masks, monkeypatch, **{"lambda": 0.8})
        _close(merged, ref, scale=float((xs[0] - b).abs().max() + (xs[1] - b).abs().max()) / 0.3)
        assert not torch.equal(merged, b), name


def test_merge_from_and_to_s3_equals_the_local_merge(fp32, tmp_path, s3_bucket):
    """Inputs as plain HF folders on S3 (staged and verified), output uploaded and verified: same tensors."""
    from finmerge.core import storage

    fs, _ = storage.filesystem(f"s3://{s3_bucket}")
    uris = {}
    for role, folder in fp32.items():
        for p in Path(folder).iterdir():
            if p.is_file():
                fs.put_file(str(p), f"{s3_bucket}/in/{role}/{p.name}")
        uris[role] = f"s3://{s3_bucket}/in/{role}"
    cfg = MergeConfig(method="ties", density=0.4, dtype="bfloat16", shard_size_mb=0)
    st = str(tmp_path / "st")
    remote = merge_models(uris["base"], uris["instruct"], uris["domain"], f"s3://{s3_bucket}/out", cfg, st)
    local = merge_models(fp32["base"], fp32["instruct"], fp32["domain"], str(tmp_path / "local"), cfg, st)
    assert storage.read_manifest(remote["uri"]) is not None
    got, want = _weights(storage.stage_folder(remote["uri"], str(tmp_path / "st2"))), _weights(local["uri"])
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert remote["counts"]["shards"] > 1  # one tensor per shard, with an index

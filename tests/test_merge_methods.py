"""ties / dare / slerp and per-tensor rules: the arithmetic against mergekit's own functions, whole merges
against `mergekit` runs on the same tiny models, and the properties finmerge adds (seeding, exact top-k)."""

from __future__ import annotations

import json
from pathlib import Path

import mergekit  # noqa: F401  (a test dependency: the reference these tests compare with)
import pytest
import torch
import yaml
from safetensors.torch import load_file

from finmerge import merge_methods as mm
from finmerge.cli import main
from finmerge.config import MergeConfig
from finmerge.mergekit_compat import MergekitConfigError, from_mergekit
from tasks.merge import merge_models
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


# -- whole merges against mergekit ------------------------------------------------------------------------
CASES = {
    "task_arithmetic": {"parameters": {}, "models": [{"weight": 1.0}, {"weight": 0.8}]},
    "ties": {"parameters": {"normalize": True}, "models": [{"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.3}]},
    "dare_ties": {"parameters": {}, "models": [{"weight": 1.0, "density": 1.0}, {"weight": 0.5, "density": 1.0}]},
    "linear": {"parameters": {}, "models": [{"weight": 0.3}, {"weight": 0.7}]},
    "slerp": {"parameters": {"t": [{"filter": "self_attn", "value": 0.2}, {"value": 0.6}]}, "models": [{}]},
}  # fmt: skip


def _mergekit_yaml(method: str, tri: dict, dtype: str) -> dict:
    case = CASES[method]
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
@pytest.mark.parametrize("method", list(CASES))
def test_same_tensors_as_mergekit(method, fp32, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    doc = _mergekit_yaml(method, fp32, "bfloat16")
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


def test_merge_from_and_to_s3_equals_the_local_merge(fp32, tmp_path, s3_bucket):
    """Inputs as plain HF folders on S3 (staged and verified), output uploaded and verified: same tensors."""
    from finmerge import storage

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

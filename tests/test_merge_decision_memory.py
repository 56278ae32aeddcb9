"""ties' and dare's decisions remembered across merges (finmerge/merge/decision_memory.py): a merge that meets
task vectors an earlier merge decided (same base and model digests, tensor, density, seed) skips their
decisions and still writes the torch path's bytes; a retrain (new domain model, same base and instruct)
decides only τ_fin, its one band pass split over both threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finmerge.config import MergeConfig
from finmerge.core import hash_cache
from finmerge.merge import decision_memory, fused_ties
from finmerge.merge.stream import Buffers
from tests.test_merge_fused import _content, _merge
from tests.test_ties_kernel import CASES, _assert_same, _bits, _both, _fused, _inputs
from tests.test_ties_kernel import triplets as triplets  # noqa: F401 - the fixture

IDS = {"base": "b", "instruct": "i", "domain": "d"}
REMEMBERED = ["ties", "ties-rescale-lambda", "ties-dense-uneven", "dare_ties", "dare_linear"]


def _spy_decisions(monkeypatch) -> list[tuple]:
    """Records the work of each vector's decisions: ("top-k", halves) and ("sums", wanted) of dare's pass."""
    calls, magnitude, second = [], fused_ties.FusedTies._magnitude, fused_ties.FusedTies._second_pass

    def spy_magnitude(self, xr, br, density, ws, i, halves=False):
        calls.append(("top-k", halves))
        return magnitude(self, xr, br, density, ws, i, halves)

    def spy_second(self, *args):
        calls.append(("sums", args[-2]))  # (..., sums_wanted, chunks)
        return second(self, *args)

    monkeypatch.setattr(fused_ties.FusedTies, "_magnitude", spy_magnitude)
    monkeypatch.setattr(fused_ties.FusedTies, "_second_pass", spy_second)
    return calls


def _run(cfg: MergeConfig, x: dict, memory) -> tuple:
    from finmerge.merge.method_registry import METHODS

    kernel = fused_ties.FusedTies(threads=2, memory=memory)
    try:
        got = _fused(kernel, "model.layers.0.mlp.up_proj.weight", METHODS[cfg.method].tensor_params(cfg, {}),
                     x, torch.bfloat16)  # fmt: skip
    finally:
        kernel.close()
    return _bits(*got)


@pytest.mark.parametrize("case", REMEMBERED)
@pytest.mark.parametrize("shape", [(4099,), (301, 1001)], ids=str)  # the whole-vector and the band selection
def test_remembered_decisions_write_the_same_bytes_without_deciding_again(tmp_path, monkeypatch, case, shape):
    method, cfg = CASES[case]
    x = _inputs(shape, torch.bfloat16, seed=5)
    _, want = _both(method, cfg, x)
    first = decision_memory.DecisionMemory(tmp_path, IDS)
    _assert_same(_run(cfg, x, first), want)
    assert first.save(IDS) == 2  # both vectors' decisions
    decided = _spy_decisions(monkeypatch)
    again = decision_memory.DecisionMemory(tmp_path, IDS)
    _assert_same(_run(cfg, x, again), want)
    assert again.hits == 2
    # top-k vectors need no pass at all; dare's masks are drawn again from their seeds, without the L1 sums
    assert decided == ([] if method == "ties" else [("sums", False)] * 2)  # dare's masks, one task each
    assert again.save(IDS) == 0  # nothing new


@pytest.mark.parametrize(
    "case, kind",
    [("ties", "randn"), ("ties", "grid"), ("ties-rescale-lambda", "randn"), ("dare_ties", "randn")],
)  # grid: ties at the threshold on both sides of the split
def test_one_vector_to_decide_splits_its_pass_and_agrees(tmp_path, monkeypatch, case, kind):
    """A retrain: τ_inst remembered, τ_fin new (another domain model): one top-k, its band in two halves; dare:
    τ_inst's mask drawn again, τ_fin's mask and L1 sums in two halves of its chunks."""
    method, cfg = CASES[case]
    x = _inputs((613, 1001), torch.bfloat16, seed=11, kind=kind)
    first = decision_memory.DecisionMemory(tmp_path, IDS)
    _run(cfg, x, first)
    first.save(IDS)
    retrain = _inputs((613, 1001), torch.bfloat16, seed=12, kind=kind)
    x2 = {**x, "domain": retrain["domain"]}
    _, want = _both(method, cfg, x2)
    decided = _spy_decisions(monkeypatch)
    memory = decision_memory.DecisionMemory(tmp_path, {**IDS, "domain": "d2"})
    _assert_same(_run(cfg, x2, memory), want)
    assert memory.hits == 1
    split = {
        "ties": [("top-k", True)],
        "ties-rescale-lambda": [("sums", True), ("sums", True), ("top-k", True)],
        "dare_ties": [("sums", False), ("sums", False), ("sums", True), ("sums", True)],
    }
    assert sorted(decided) == split[case]


def test_band_in_halves_equals_the_band_in_one_pass():
    k = fused_ties.FusedTies(threads=2)
    try:
        t = _inputs((517, 1001), torch.bfloat16, seed=3)
        x = {r: v.view(torch.int16).numpy().view(np.uint16).reshape(-1) for r, v in t.items()}
        d = (t["instruct"].float() - t["base"].float()).abs().reshape(-1).numpy()
        lo, hi = (np.float32(q).view(np.uint32) for q in np.quantile(d, [0.49, 0.51]))  # 2 % of the values
        one = k._band(x["instruct"], x["base"], lo, hi, Buffers(), 0, halves=False)
        two = k._band(x["instruct"], x["base"], lo, hi, Buffers(), 0, halves=True)
    finally:
        k.close()
    assert one[0] == two[0] > 0
    assert one[1].size > 1000 and np.array_equal(one[1], two[1]) and np.array_equal(one[2], two[2])


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_a_retrain_merge_reuses_the_instruct_decisions_and_writes_the_torch_bytes(
    triplets, tmp_path, monkeypatch, method
):
    monkeypatch.setenv("FINMERGE_FUSED", "1")  # tiny models: force the kernels
    monkeypatch.setattr(hash_cache, "SETTLE_NS", 0)  # the models were just written: remember their digests
    cfg = MergeConfig(method=method, density=0.5, seed=4)
    tri = triplets["bf16"]
    first = _merge(tri, tmp_path / "first", cfg)
    again = _merge(tri, tmp_path / "again", cfg)
    assert first["metrics"]["merge/decisions_remembered"] == 0
    vectors = 2 * first["metrics"]["merge/n_tensors"] - 2 * _copied(tmp_path / "first")
    assert again["metrics"]["merge/decisions_remembered"] == vectors > 0
    assert _content(tmp_path / "again") == _content(tmp_path / "first")
    # the next cycle: a new domain model (fp32 master weights), the same base and instruct
    cycle = {**tri, "domain": triplets["bf16-fp32-cpt"]["domain"]}
    got = _merge(cycle, tmp_path / "cycle", cfg)
    assert got["metrics"]["merge/decisions_remembered"] == vectors / 2
    monkeypatch.setenv("FINMERGE_FUSED", "0")
    _merge(cycle, tmp_path / "torch", cfg)
    assert _content(tmp_path / "cycle") == _content(tmp_path / "torch")


def test_nothing_is_remembered_without_input_digests(triplets, tmp_path, monkeypatch):
    monkeypatch.setenv("FINMERGE_FUSED", "1")
    monkeypatch.setattr(hash_cache, "SETTLE_NS", 0)
    cfg = MergeConfig(method="ties", density=0.5, hash_inputs=False)
    for out in ("one", "two"):
        got = _merge(triplets["bf16"], tmp_path / out, cfg)
        assert got["metrics"]["merge/decisions_remembered"] == 0
    assert not (tmp_path / "st" / decision_memory.FILE_NAME).exists()


def test_a_broken_memory_file_only_costs_the_decisions(triplets, tmp_path, monkeypatch):
    monkeypatch.setenv("FINMERGE_FUSED", "1")
    monkeypatch.setattr(hash_cache, "SETTLE_NS", 0)
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / decision_memory.FILE_NAME).write_bytes(b"not a database")
    cfg = MergeConfig(method="ties", density=0.5)
    got = _merge(triplets["bf16"], tmp_path / "out", cfg)
    assert got["metrics"]["merge/decisions_remembered"] == 0
    monkeypatch.setenv("FINMERGE_FUSED", "0")
    _merge(triplets["bf16"], tmp_path / "torch", cfg)
    assert _content(tmp_path / "out") == _content(tmp_path / "torch")


def test_model_identity_needs_every_digest():
    assert decision_memory.model_identity({"manifest_digest": "m", "shards": {"a": None}}).startswith(
        "manifest:"
    )
    assert decision_memory.model_identity({"shards": {"a": "x", "b": "y"}}).startswith("shards:")
    assert decision_memory.model_identity({"shards": {"a": "x", "b": None}}) is None
    assert decision_memory.model_identity({"shards": {}}) is None
    assert decision_memory.model_identity(None) is None


def _copied(folder) -> int:
    import json

    report = json.loads((folder / "merge_report.json").read_text())["tensors"]
    return sum(1 for t in report if t["kind"] != "merged")


def test_a_shard_rewritten_in_a_finmerge_folder_is_decided_again(triplets, tmp_path, monkeypatch):
    """A finmerge folder is identified by its manifest's digest, recorded when it was written: the shards'
    size and times go with it, so a shard changed in place since then does not reuse its old decisions."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("FINMERGE_FUSED", "1")
    monkeypatch.setattr(hash_cache, "SETTLE_NS", 0)
    cfg = MergeConfig(method="ties", density=0.5)
    tri = triplets["bf16"]
    _merge(tri, tmp_path / "cpt", cfg)  # a finmerge folder (with a manifest) as the next domain model
    cycle = {**tri, "domain": str(tmp_path / "cpt")}
    first = _merge(cycle, tmp_path / "one", cfg)
    vectors = first["metrics"]["merge/decisions_remembered"] * 2  # base → instruct remembered, cpt decided
    assert _merge(cycle, tmp_path / "two", cfg)["metrics"]["merge/decisions_remembered"] == vectors
    shard = tmp_path / "cpt" / "model.safetensors"
    tensors = load_file(shard)
    name = next(k for k in sorted(tensors) if k.endswith("down_proj.weight"))
    tensors[name] = tensors[name].flip(0).contiguous()  # other weights, same size: only the times tell
    save_file(tensors, shard, metadata={"format": "pt"})
    got = _merge(cycle, tmp_path / "three", cfg)
    assert got["metrics"]["merge/decisions_remembered"] == vectors / 2
    monkeypatch.setenv("FINMERGE_FUSED", "0")
    _merge(cycle, tmp_path / "torch", cfg)
    assert _content(tmp_path / "three") == _content(tmp_path / "torch")

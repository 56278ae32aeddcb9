"""Streaming task-arithmetic merge on real tiny Llamas (made locally with finmerge.demo.models)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from finmerge.config import MergeConfig
from finmerge.core import storage
from finmerge.demo.chat import CHAT_TEMPLATE
from finmerge.demo.models import init_llama, save_model, train_tokenizer
from finmerge.merge.execute import MergeError, merge_from_recipe, merge_models
from finmerge.merge.triplet import PreflightError
from finmerge.models import loading as modelio
from finmerge.models.safetensors_stream import INDEX_NAME
from tests.helpers import TINY

SHAPE = TINY.model_copy(
    update={"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
)
TEXTS = [
    "株式会社青葉精機の主な事業は精密機械の製造です。本社所在地は愛知県名古屋市です。",
    "当社の売上高は前期比で増加しました。営業利益も堅調に推移しています。",
    "配当金は一株当たり三十円とします。経常利益は前期を上回りました。",
    "今日は晴れです。明日は雨が降るでしょう。",
] * 30
EXTRA_TOKENS = ["<決算>", "<売上高>", "<営業利益>", "<経常利益>", "<配当>"]


# -- tiny model triplets ----------------------------------------------------------------------------------
def _perturbed(model, seed: int, scale: float = 0.01):
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return m


def _save(model, tok, folder: Path, dtype: torch.dtype, committed: bool) -> str:
    model = model.to(dtype)
    if committed:  # a finmerge output folder (with manifest), as the pipeline passes them
        with storage.output_folder(str(folder), str(folder.parent / ".staging")) as out:
            save_model(model, tok, out.path, "# tiny")
    else:  # a plain HF folder, as a user would pass it
        save_model(model, tok, folder, "# tiny")
    return str(folder)


def _triplet(root: Path, dtype=torch.float32, extra_tokens=(), committed=True) -> dict[str, str]:
    base_tok = train_tokenizer(iter(TEXTS), SHAPE.vocab_size, root / ".tok-base")
    inst_tok = copy.deepcopy(base_tok)
    inst_tok.chat_template = CHAT_TEMPLATE
    base = init_llama(SHAPE, base_tok, seed=0)
    inst = _perturbed(base, 1)
    dom = _perturbed(base, 2)
    dom_tok = base_tok
    if extra_tokens:
        dom_tok = copy.deepcopy(base_tok)
        dom_tok.add_tokens(list(extra_tokens))
        n_old = base.config.vocab_size
        dom.resize_token_embeddings(len(dom_tok), mean_resizing=False)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for emb in (dom.get_input_embeddings().weight, dom.get_output_embeddings().weight):
                emb[n_old:] = torch.randn(emb[n_old:].shape, generator=g) * 0.02
    return {
        "base": _save(base, base_tok, root / "base", dtype, committed),
        "instruct": _save(inst, inst_tok, root / "instruct", dtype, committed),
        "domain": _save(dom, dom_tok, root / "domain", dtype, committed),
    }


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> dict[str, str]:
    return _triplet(tmp_path_factory.mktemp("fp32"))


@pytest.fixture(scope="module")
def bf16(tmp_path_factory) -> dict[str, str]:
    return _triplet(tmp_path_factory.mktemp("bf16"), dtype=torch.bfloat16, committed=False)


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> dict[str, str]:
    return _triplet(tmp_path_factory.mktemp("vocab"), extra_tokens=EXTRA_TOKENS, committed=False)


def weights(folder: str | Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in modelio.weight_files(Path(folder)):
        out.update(load_file(str(f)))
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bit_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(bits(got[k]), bits(want[k])), k


def run(m: dict, out: Path, **cfg) -> dict:
    kw = {k: cfg.pop(k) for k in ("block_elems",) if k in cfg}
    return merge_models(
        m["base"], m["instruct"], m["domain"], str(out), MergeConfig(**cfg), str(out.parent / "stage"), **kw
    )


def no_partials(parent: Path) -> bool:
    return not list(parent.glob(".partial-*"))


# -- arithmetic -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("triplet", ["fp32", "bf16"])
@pytest.mark.parametrize(
    ("alpha", "beta", "role"), [(0.0, 0.0, "base"), (1.0, 0.0, "instruct"), (0.0, 1.0, "domain")]
)
def test_degenerate_coefficients_reproduce_inputs_bit_exactly(request, tmp_path, triplet, alpha, beta, role):
    m = request.getfixturevalue(triplet)
    res = run(m, tmp_path / "out", alpha=alpha, beta=beta)
    assert_bit_equal(weights(tmp_path / "out"), weights(m[role]))
    want = "float32" if triplet == "fp32" else "bfloat16"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == want
    assert res["metrics"]["merge/max_abs_delta_vs_inst" if role == "instruct" else "merge/n_tensors"] >= 0
    if role == "instruct":
        assert res["metrics"]["merge/max_abs_delta_vs_inst"] == 0.0
    if role == "domain":
        assert res["metrics"]["merge/max_abs_delta_vs_cpt"] == 0.0


def test_task_arithmetic_matches_reference_and_sharding_is_transparent(fp32, tmp_path):
    b, i, d = weights(fp32["base"]), weights(fp32["instruct"]), weights(fp32["domain"])
    res1 = run(fp32, tmp_path / "one")
    res_n = run(fp32, tmp_path / "many", shard_size_mb=0)  # 0 MB: one tensor per shard
    one, many = weights(tmp_path / "one"), weights(tmp_path / "many")
    for k in b:
        ref = d[k] + i[k] - b[k]
        torch.testing.assert_close(one[k], ref, rtol=1e-6, atol=1e-6)
        assert torch.equal(one[k], many[k]), k
    assert res1["counts"]["shards"] == 1 and (tmp_path / "one" / "model.safetensors").exists()
    assert not (tmp_path / "one" / INDEX_NAME).exists()
    assert res_n["counts"]["shards"] == len(b)
    index = json.loads((tmp_path / "many" / INDEX_NAME).read_text())
    assert set(index["weight_map"]) == set(b)
    files = sorted(set(index["weight_map"].values()))
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    total = 0
    for f in files:
        part = load_file(str(tmp_path / "many" / f))
        assert all(index["weight_map"][k] == f for k in part)
        total += sum(t.numel() * t.element_size() for t in part.values())
    assert index["metadata"]["total_size"] == total
    # the model card / report record the shard hashes that the manifest also has
    report = json.loads((tmp_path / "many" / "merge_report.json").read_text())
    manifest = storage.read_manifest(str(tmp_path / "many"))
    assert {f: manifest["files"][f]["sha256"] for f in files} == report["summary"]["shards"]
    # tiny row blocks stream the same bytes
    run(fp32, tmp_path / "blocks", block_elems=100)
    assert_bit_equal(weights(tmp_path / "blocks"), one)


def test_inputs_that_cannot_be_mapped_are_read_with_pread(fp32, tmp_path, monkeypatch):
    """Inputs are mapped from the page cache; a file system that refuses to map a file (some FUSE mounts)
    gets it read with pread instead: the same bytes, and one refused try per file."""
    import errno
    import mmap

    from finmerge.models import safetensors_stream

    run(fp32, tmp_path / "mapped")
    real, refused = mmap.mmap, []

    def refusing(fileno, *args, **kwargs):
        if fileno < 0:  # anonymous memory (the writer's buffers) is not the file system's to refuse
            return real(fileno, *args, **kwargs)
        refused.append(os.readlink(f"/proc/self/fd/{fileno}"))
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(safetensors_stream.mmap, "mmap", refusing)
    run(fp32, tmp_path / "read")
    inputs = sorted(
        str(p.resolve()) for r in ("base", "instruct", "domain") for p in Path(fp32[r]).glob("*.safetensors")
    )
    assert sorted(refused) == inputs
    assert_bit_equal(weights(tmp_path / "read"), weights(tmp_path / "mapped"))


_TRUNCATE_WHILE_MERGING = """
import os, sys
from finmerge.config import MergeConfig
from finmerge.merge.execute import merge_models
from finmerge.models import safetensors_stream

base, inst, dom, out, staging = sys.argv[1:6]
mapped = safetensors_stream.SafetensorsModel.view


def view(self, name, a, b):  # the domain model's file is cut short in place right after its first mapping
    t = mapped(self, name, a, b)
    if str(self.folder) == dom:
        os.truncate(self.tensors[name].file, self.tensors[name].offset)
    return t


safetensors_stream.SafetensorsModel.view = view
merge_models(base, inst, dom, out, MergeConfig(), staging)
"""


def test_an_input_cut_short_in_place_during_the_merge_ends_it_and_commits_nothing(bf16, tmp_path):
    """Inputs are mapped: a file truncated in place while the merge reads it ends the process with SIGBUS
    (docs/reliability.md), not with an error message. The output is not committed."""
    import resource
    import signal
    import subprocess
    import sys

    roles = {r: tmp_path / r for r in ("base", "instruct", "domain")}
    for r, dest in roles.items():
        shutil.copytree(bf16[r], dest)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _TRUNCATE_WHILE_MERGING,
            *map(str, roles.values()),
            str(out),
            str(tmp_path / "st"),
        ],
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0)),
        timeout=300,
    )
    assert proc.returncode == -signal.SIGBUS, proc.stderr[-2000:]
    assert not out.exists()


def test_linear_is_normalised_weighted_average(fp32, tmp_path):
    i, d = weights(fp32["instruct"]), weights(fp32["domain"])
    run(fp32, tmp_path / "lin", method="linear", alpha=1.0, beta=3.0)
    out = weights(tmp_path / "lin")
    for k in i:
        torch.testing.assert_close(out[k], 0.25 * i[k] + 0.75 * d[k], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="alpha \\+ beta"):
        run(fp32, tmp_path / "bad", method="linear", alpha=1.0, beta=-1.0)
    assert not (tmp_path / "bad").exists()


def test_merged_folder_loads_generates_and_matches_reference_logits(fp32, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    run(fp32, tmp_path / "out", alpha=0.7, beta=1.2, shard_size_mb=0)
    b, i, d = weights(fp32["base"]), weights(fp32["instruct"]), weights(fp32["domain"])
    ref = LlamaForCausalLM(LlamaConfig.from_pretrained(fp32["base"]))
    ref.load_state_dict({k: b[k] + 0.7 * (i[k] - b[k]) + 1.2 * (d[k] - b[k]) for k in b})
    ref.eval()
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), use_safetensors=True)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    ids = tok("当社の売上高は前期比で", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-4)
        gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids.shape[1]
    prompt = tok.apply_chat_template([{"role": "user", "content": "配当は？"}], tokenize=False)
    inst_tok = AutoTokenizer.from_pretrained(fp32["instruct"])
    assert prompt == inst_tok.apply_chat_template([{"role": "user", "content": "配当は？"}], tokenize=False)
    assert model.generation_config.eos_token_id == inst_tok.eos_token_id


def test_report_card_recipe_and_meta(fp32, tmp_path):
    res = run(fp32, tmp_path / "out", alpha=0.5, beta=1.0)
    out = tmp_path / "out"
    n = len(weights(fp32["base"]))
    assert res["uri"] == str(out) and res["digest"]
    assert res["counts"]["tensors_merged"] == n and res["counts"]["tensors_excluded"] == 0
    assert res["counts"]["rows_domain_only"] == 0
    assert set(res["metrics"]) == {
        "merge/max_abs_delta_vs_cpt",
        "merge/max_abs_delta_vs_inst",
        "merge/n_tensors",
        "merge/seconds",
        "merge/fused_share",  # merged elements the fused kernel computed (fp32 inputs: all)
        "merge/candidates_in_pass",
        "merge/pass_seconds",
        "merge/kernel_load_seconds",  # 0 here: the torch path loads no kernels
        "merge/decisions_remembered",  # ties / dare task vectors decided by an earlier merge (0: linear)
    }
    # a tiny model: below fused.MIN_ELEMENTS the torch path does it (tests/test_merge_fused.py forces the kernel)
    assert res["metrics"]["merge/fused_share"] == 0.0 and res["metrics"]["merge/candidates_in_pass"] == 1
    assert res["metrics"]["merge/kernel_load_seconds"] < 0.05
    assert res["metrics"]["merge/n_tensors"] == n and res["metrics"]["merge/max_abs_delta_vs_cpt"] > 0
    for a in res["artifacts"]:
        assert (out / a).stat().st_size > 0
    report = json.loads((out / "merge_report.json").read_text())
    assert len(report["tensors"]) == n
    assert (
        max(t["max_abs_delta_vs_cpt"] for t in report["tensors"])
        == res["metrics"]["merge/max_abs_delta_vs_cpt"]
    )
    card = (out / "README.md").read_text()
    digests = {r: storage.read_manifest(fp32[r])["digest"] for r in ("base", "instruct", "domain")}
    assert all(dg in card for dg in digests.values())
    assert "α = 0.5" in card and "β = 1" in card and "finmerge 0.1.0" in card
    # the same merge again into the same folder: the same digest (no timing or other run state in its files)
    again = merge_models(fp32["base"], fp32["instruct"], fp32["domain"], str(out), MergeConfig(alpha=0.5),
                         str(tmp_path / "stage"), overwrite=True)  # fmt: skip
    assert again["digest"] == res["digest"]
    # the recipe reproduces the merge byte for byte, in another folder: every file, so the same digest
    res2 = merge_from_recipe(str(out / "merge_recipe.yaml"), str(tmp_path / "again"), str(tmp_path / "stage"))
    m1, m2 = storage.read_manifest(res["uri"]), storage.read_manifest(res2["uri"])
    assert m1["files"] == m2["files"] and res2["digest"] == res["digest"]


def test_exclude_takes_domain_tensors_unchanged(fp32, tmp_path):
    res = run(fp32, tmp_path / "out", exclude=[r"^lm_head\.", r"embed_tokens"])
    out, d = weights(tmp_path / "out"), weights(fp32["domain"])
    assert torch.equal(out["lm_head.weight"], d["lm_head.weight"])
    assert torch.equal(out["model.embed_tokens.weight"], d["model.embed_tokens.weight"])
    assert not torch.equal(out["model.norm.weight"], d["model.norm.weight"])
    assert res["counts"]["tensors_excluded"] == 2


# -- vocab extension -------------------------------------------------------------------------------------
def test_vocab_extension_keeps_domain_rows_and_tokenizer(extended, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    vb, extra = SHAPE.vocab_size, len(EXTRA_TOKENS)
    res = run(extended, tmp_path / "out")
    out = tmp_path / "out"
    o, b, i, d = (weights(p) for p in (out, extended["base"], extended["instruct"], extended["domain"]))
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        assert o[k].shape[0] == vb + extra == d[k].shape[0] and b[k].shape[0] == vb
        assert torch.equal(bits(o[k][vb:]), bits(d[k][vb:])), k
        torch.testing.assert_close(o[k][:vb], d[k][:vb] + i[k] - b[k], rtol=1e-6, atol=1e-6)
    assert res["counts"]["rows_domain_only"] == extra and res["counts"]["tensors_vocab_extended"] == 2
    assert json.loads((out / "config.json").read_text())["vocab_size"] == vb + extra
    dom = Path(extended["domain"])
    assert (out / "tokenizer.json").read_bytes() == (dom / "tokenizer.json").read_bytes()
    inst = Path(extended["instruct"])
    assert (out / "chat_template.jinja").read_text() == (inst / "chat_template.jinja").read_text()
    assert (out / "generation_config.json").read_text() == (inst / "generation_config.json").read_text()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == vb + extra and tok.chat_template == CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True)
    ids = tok("<決算>の<売上高>", return_tensors="pt").input_ids
    assert int(ids.max()) >= vb
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]
    # row blocks that straddle the shared/domain-only boundary give the same bytes
    run(extended, tmp_path / "blocks", block_elems=7 * SHAPE.hidden_size)
    assert_bit_equal(weights(tmp_path / "blocks"), o)
    report = json.loads((out / "merge_report.json").read_text())
    assert report["summary"]["vocab"]["rows_domain_only"] == extra


def test_vocab_policies_refused(extended, tmp_path):
    # the domain model's vocab is smaller than the base's: rows would be dropped
    swapped = {"base": extended["domain"], "instruct": extended["domain"], "domain": extended["base"]}
    with pytest.raises(PreflightError, match="smaller than base"):
        run(swapped, tmp_path / "a")
    # an instruct model with its own vocab
    odd = {"base": extended["base"], "instruct": extended["domain"], "domain": extended["domain"]}
    with pytest.raises(PreflightError, match="instruct vocab_size"):
        run(odd, tmp_path / "b")
    # a domain tokenizer that renumbers the base tokens
    dom = tmp_path / "dom"
    shutil.copytree(extended["domain"], dom)
    other = [t[::-1] for t in TEXTS]
    train_tokenizer(iter(other), SHAPE.vocab_size + len(EXTRA_TOKENS), tmp_path / "othertok")
    shutil.copy(tmp_path / "othertok" / "tokenizer.json", dom / "tokenizer.json")
    with pytest.raises(PreflightError, match="does not extend"):
        run({**extended, "domain": str(dom)}, tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc") and no_partials(tmp_path)


# -- preflight and failure paths ---------------------------------------------------------------------------
def _copy_model(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(storage.MANIFEST))
    return dst


def test_preflight_lists_every_mismatch_and_writes_nothing(fp32, tmp_path):
    dom = _copy_model(fp32["domain"], tmp_path / "dom")
    cfg = json.loads((dom / "config.json").read_text())
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"], num_hidden_layers=3)
    (dom / "config.json").write_text(json.dumps(cfg))
    sd = load_file(str(dom / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    sd["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 64)
    # float formats may differ (each is upcast exactly); an integer tensor where the others hold floats may not
    sd["model.layers.0.self_attn.k_proj.weight"] = sd["model.layers.0.self_attn.k_proj.weight"].to(
        torch.int32
    )
    sd["extra.weight"] = torch.zeros(3)
    save_file(sd, str(dom / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises(PreflightError) as err:
        run({**fp32, "domain": str(dom)}, out)
    msg = str(err.value)
    for needle in (
        "model_type",
        "architectures",
        "num_hidden_layers",
        "model.layers.1.mlp.up_proj.weight: missing in domain",
        "model.layers.0.self_attn.q_proj.weight: shape differs",
        "model.layers.0.self_attn.k_proj.weight: dtype differs",
        "extra.weight: missing in base, instruct",
    ):
        assert needle in msg, needle
    assert len(err.value.problems) == 7
    assert not out.exists() and no_partials(tmp_path)


@pytest.mark.parametrize("fused", ["1", "0"])  # the kernels (forced on these tiny models) and the torch path
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties"])
def test_nan_or_overflow_is_an_error_and_nothing_is_committed(fp32, tmp_path, monkeypatch, method, fused):
    monkeypatch.setenv("FINMERGE_FUSED", fused)
    dom = _copy_model(fp32["domain"], tmp_path / "dom")
    sd = load_file(str(dom / "model.safetensors"))
    sd["model.layers.1.self_attn.o_proj.weight"][3, 5] = float("nan")
    save_file(sd, str(dom / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MergeError, match="input domain tensor model.layers.1.self_attn.o_proj.weight"):
        run({**fp32, "domain": str(dom)}, tmp_path / "out", method=method)
    assert not (tmp_path / "out").exists() and no_partials(tmp_path)
    # finite inputs whose merge overflows the output dtype (density 1: ties and dare keep every entry)
    sd["model.layers.1.self_attn.o_proj.weight"][3, 5] = 2e5  # halved by a disjoint mean, still > 65504
    save_file(sd, str(dom / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MergeError, match="output tensor model.layers.1.self_attn.o_proj.weight"):
        run({**fp32, "domain": str(dom)}, tmp_path / "out", dtype="float16", method=method, density=1.0)
    assert not (tmp_path / "out").exists() and no_partials(tmp_path)


def test_pickle_only_input_refused(fp32, tmp_path):
    pk = tmp_path / "pickled"
    pk.mkdir()
    shutil.copy(Path(fp32["domain"]) / "config.json", pk / "config.json")
    torch.save(load_file(str(Path(fp32["domain"]) / "model.safetensors")), pk / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        run({**fp32, "domain": str(pk)}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_integer_tensors_copied_when_equal_else_refused(tmp_path):
    def model(folder: Path, seed: int, idx: torch.Tensor) -> str:
        folder.mkdir()
        cfg = {
            "model_type": "toy",
            "architectures": ["Toy"],
            "hidden_size": 4,
            "vocab_size": 10,
            "dtype": "float32",
        }
        (folder / "config.json").write_text(json.dumps(cfg))
        g = torch.Generator().manual_seed(seed)
        sd = {"w": torch.randn(10, 4, generator=g), "idx": idx, "mask": torch.tensor([True, False, True])}
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
        toy_tokenizer.save_pretrained(str(folder))  # the merged model takes the domain's tokenizer
        return str(folder)

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {w: i for i, w in enumerate(["<unk>", "</s>", *"abcdefgh"])}  # 10 tokens = vocab_size
    toy_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="<unk>")), eos_token="</s>"
    )
    idx = torch.arange(6, dtype=torch.int64)
    m = {r: model(tmp_path / r, s, idx) for s, r in enumerate(("base", "instruct", "domain"))}
    res = run(m, tmp_path / "out")
    out = weights(tmp_path / "out")
    assert torch.equal(out["idx"], idx) and out["idx"].dtype == torch.int64
    assert torch.equal(out["mask"], torch.tensor([True, False, True]))
    assert res["counts"]["tensors_copied"] == 2 and res["counts"]["tensors_merged"] == 1
    m["domain"] = model(tmp_path / "domain2", 2, idx + 1)
    with pytest.raises(MergeError, match="idx differs"):
        run(m, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_input_hashes_in_the_card_follow_merge_hash_inputs(fp32, tmp_path):
    """A user's folder (no finmerge manifest) gets the sha256 of its weight files in the card, through the
    stage and its config; ``merge.hash_inputs=false`` leaves them out and changes no weight."""
    import hashlib

    from finmerge.cli import main

    plain = {}
    for role in ("base", "instruct", "domain"):
        plain[role] = tmp_path / "plain" / role
        shutil.copytree(fp32[role], plain[role], ignore=shutil.ignore_patterns(storage.MANIFEST))
    args = ["merge", *(a for r in ("base", "instruct", "domain") for a in (f"--{r}", str(plain[r])))]
    staging = [
        "--set",
        f"storage.staging_dir={tmp_path / 'stage'}",
        "--set",
        f"storage.uri={tmp_path / 'runs'}",
    ]
    assert main([*args, "--out", str(tmp_path / "hashed"), *staging]) == 0
    assert main([*args, "--out", str(tmp_path / "fast"), *staging, "--set", "merge.hash_inputs=false"]) == 0
    shard = next(plain["domain"].glob("*.safetensors"))
    sha = hashlib.sha256(shard.read_bytes()).hexdigest()
    hashed = json.loads((tmp_path / "hashed" / "merge_report.json").read_text())["summary"]["inputs"]
    fast = json.loads((tmp_path / "fast" / "merge_report.json").read_text())["summary"]["inputs"]
    assert (
        hashed["domain"]["shards"] == {shard.name: sha}
        and sha in (tmp_path / "hashed" / "README.md").read_text()
    )
    assert not fast["domain"].get("shards") and sha not in (tmp_path / "fast" / "README.md").read_text()
    assert_bit_equal(weights(tmp_path / "fast"), weights(tmp_path / "hashed"))


def test_weights_in_a_hugging_face_cache_snapshot_take_their_sha256_from_the_blob_name(fp32, tmp_path):
    """A model folder inside the HF cache (``snapshots/<rev>/*.safetensors`` → ``blobs/<sha256>``) is not
    hashed again: the card records the blob's name, the sha256 the Hub computed."""
    import hashlib

    repo = tmp_path / "hub" / "models--org--domain"
    snap, blobs = repo / "snapshots" / "0123abc", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for p in sorted(Path(fp32["domain"]).iterdir()):
        if p.name == storage.MANIFEST:
            continue
        data = p.read_bytes()
        # the weights' blob takes a name that is not their hash: the card must show the name (not re-hashed)
        name = "f" * 64 if p.suffix == ".safetensors" else hashlib.sha256(data).hexdigest()
        (blobs / name).write_bytes(data)
        (snap / p.name).symlink_to(Path("..") / ".." / "blobs" / name)
    res = merge_models(fp32["base"], fp32["instruct"], str(snap), str(tmp_path / "out"), MergeConfig(),
                       str(tmp_path / "stage"))  # fmt: skip
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())["summary"]["inputs"]
    shard = next(snap.glob("*.safetensors")).name
    assert report["domain"]["shards"] == {shard: "f" * 64} and res["digest"]
    run(fp32, tmp_path / "ref")  # the same merge from the folder itself: the same weights
    assert_bit_equal(weights(tmp_path / "out"), weights(tmp_path / "ref"))

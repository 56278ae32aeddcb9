"""Instruction-vector / domain-vector analysis on constructed vectors with known cosines, and on a tiny Llama."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from finmerge.config import TinyModelConfig
from finmerge.core import storage
from finmerge.demo.models import init_llama, save_model, train_tokenizer
from finmerge.merge.analyze import analyze_vectors, group_of

V, H = 10, 8  # vocab rows, hidden size of the constructed models


def _pm(shape, seed: int) -> torch.Tensor:
    """Random ±1/8 entries: sums of them are exact in fp32, so every expectation below is exact."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(torch.float32) / 8


def _orthogonal_partner(u: torch.Tensor, seed: int) -> torch.Tensor:
    """Same magnitudes as u with signs flipped on exactly half of the entries: ⟨u, v⟩ = 0."""
    g = torch.Generator().manual_seed(seed)
    flip = torch.ones(u.numel())
    flip[torch.randperm(u.numel(), generator=g)[: u.numel() // 2]] = -1
    return u * flip.reshape(u.shape)


def constructed() -> tuple[dict, dict, dict]:
    """(base, tau_inst, tau_fin) with a known cosine per tensor."""
    shapes = {
        "model.embed_tokens.weight": (V, H),
        "model.layers.0.self_attn.q_proj.weight": (H, H),
        "model.layers.0.mlp.up_proj.weight": (2 * H, H),
        "model.layers.0.input_layernorm.weight": (H,),
        "model.layers.1.self_attn.q_proj.weight": (H, H),
        "model.layers.1.mlp.up_proj.weight": (2 * H, H),
        "model.layers.1.mlp.up_proj.bias": (2 * H,),
        "model.norm.weight": (H,),
        "lm_head.weight": (V, H),
    }
    base = {k: _pm(s, i) * 4 for i, (k, s) in enumerate(shapes.items())}
    ti = {k: _pm(s, 100 + i) for i, (k, s) in enumerate(shapes.items())}
    tf = {
        "model.embed_tokens.weight": ti["model.embed_tokens.weight"],  # cos 1
        "model.layers.0.self_attn.q_proj.weight": ti["model.layers.0.self_attn.q_proj.weight"],  # cos 1
        "model.layers.0.mlp.up_proj.weight": _orthogonal_partner(ti["model.layers.0.mlp.up_proj.weight"], 7),
        "model.layers.0.input_layernorm.weight": torch.zeros(H),  # untouched by CPT: NaN
        "model.layers.1.self_attn.q_proj.weight": -ti["model.layers.1.self_attn.q_proj.weight"],  # cos -1
        "model.layers.1.mlp.up_proj.weight": 2 * ti["model.layers.1.mlp.up_proj.weight"],  # cos 1, ratio 2
        "model.layers.1.mlp.up_proj.bias": -ti["model.layers.1.mlp.up_proj.bias"],  # cos -1
        "model.norm.weight": _orthogonal_partner(ti["model.norm.weight"], 8),  # cos 0
        "lm_head.weight": -ti["lm_head.weight"],  # cos -1
    }
    return base, ti, tf


def _write(folder: Path, sd: dict, vocab: int = V) -> str:
    folder.mkdir(parents=True)
    cfg = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": H,
        "num_hidden_layers": 2,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in sd.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    return str(folder)


def _expected_cos(sel, ti, tf) -> float:
    d = sum(float((ti[k].double() * tf[k].double()).sum()) for k in sel)
    a = sum(float((ti[k].double() ** 2).sum()) for k in sel)
    b = sum(float((tf[k].double() ** 2).sum()) for k in sel)
    return d / math.sqrt(a * b)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("vec")
    base, ti, tf = constructed()
    uris = [
        _write(root / "base", base),
        _write(root / "inst", {k: base[k] + ti[k] for k in base}),
        _write(root / "dom", {k: base[k] + tf[k] for k in base}),
    ]
    res = analyze_vectors(*uris, str(root / "out"), str(root / "stage"), block_elems=20)
    report = json.loads((root / "out" / "vector_report.json").read_text())
    return res, report, root / "out", (base, ti, tf)


def test_per_tensor_cosines_norms_and_z(analysed):
    _, report, _, (base, ti, tf) = analysed
    t = {r["name"]: r for r in report["tensors"]}
    want = {
        "model.embed_tokens.weight": 1.0,
        "model.layers.0.self_attn.q_proj.weight": 1.0,
        "model.layers.0.mlp.up_proj.weight": 0.0,
        "model.layers.1.self_attn.q_proj.weight": -1.0,
        "model.layers.1.mlp.up_proj.weight": 1.0,
        "model.layers.1.mlp.up_proj.bias": -1.0,
        "model.norm.weight": 0.0,
        "lm_head.weight": -1.0,
    }
    for name, cos in want.items():
        assert t[name]["cos"] == pytest.approx(cos, abs=1e-12), name
        assert t[name]["z"] == pytest.approx(cos * math.sqrt(ti[name].numel()), abs=1e-9)
        assert t[name]["norm_inst"] == pytest.approx(float(ti[name].double().norm()), rel=1e-12)
        assert t[name]["rel_fin"] == pytest.approx(
            float(tf[name].double().norm() / base[name].double().norm())
        )
    up = t["model.layers.1.mlp.up_proj.weight"]
    assert up["norm_ratio"] == pytest.approx(2.0) and up["sign_agreement"] == 1.0
    assert t["model.layers.1.self_attn.q_proj.weight"]["sign_agreement"] == 0.0
    assert t["model.layers.0.mlp.up_proj.weight"]["sign_agreement"] == 0.5
    zero = t["model.layers.0.input_layernorm.weight"]
    assert zero["cos"] is None and zero["norm_fin"] == 0.0 and zero["norm_inst"] > 0  # NaN -> null in JSON


def test_groups_aggregate_sums_not_cosines(analysed):
    _, report, _, (_, ti, tf) = analysed
    g = {r["group"]: r for r in report["groups"]}
    up1 = g["layers.1.mlp.up_proj"]
    assert up1["n_tensors"] == 2 and up1["layer"] == 1 and up1["module"] == "mlp.up_proj"
    # weight: cos +1 (with twice the norm), bias: cos -1; the mean of the cosines would be 0
    sel = ["model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.bias"]
    assert up1["cos"] == pytest.approx(_expected_cos(sel, ti, tf), abs=1e-12)
    assert abs(up1["cos"]) > 0.3
    assert {"embed_tokens", "norm", "lm_head", "layers.0.self_attn.q_proj"} <= set(g)
    assert g["layers.0.input_layernorm"]["cos"] is None
    layer1 = {r["layer"]: r for r in report["layers"]}[1]
    sel1 = [k for k in ti if ".layers.1." in k]
    assert layer1["cos"] == pytest.approx(_expected_cos(sel1, ti, tf), abs=1e-12)


def test_global_metrics_and_zero_norm_exclusion(analysed):
    res, report, _, (_, ti, tf) = analysed
    glob = report["global"]
    assert glob["cos"] == pytest.approx(_expected_cos(list(ti), ti, tf), abs=1e-12)
    no_embed = [k for k in ti if k not in ("model.embed_tokens.weight", "lm_head.weight")]
    assert glob["cos_no_embed"] == pytest.approx(_expected_cos(no_embed, ti, tf), abs=1e-12)
    norm_i = math.sqrt(sum(float((v.double() ** 2).sum()) for v in ti.values()))
    norm_f = math.sqrt(sum(float((v.double() ** 2).sum()) for v in tf.values()))
    assert glob["norm_inst"] == pytest.approx(norm_i) and glob["norm_fin"] == pytest.approx(norm_f)
    # |cos| over the 8 finite tensors: 1,1,0,1,1,1,0,1 -> 6/8; the zero-norm tensor is left out
    assert glob["mean_abs_cos"] == pytest.approx(6 / 8)
    assert glob["n_zero_norm"] == 1 and glob["zero_norm_tensors"] == ["model.layers.0.input_layernorm.weight"]
    m = res["metrics"]
    assert m["analyze/cos_global"] == pytest.approx(glob["cos"])
    assert m["analyze/cos_global_no_embed"] == pytest.approx(glob["cos_no_embed"])
    assert m["analyze/norm_ratio"] == pytest.approx(norm_f / norm_i)
    assert m["analyze/mean_abs_cos"] == pytest.approx(6 / 8)
    assert {"analyze/norm_inst", "analyze/norm_fin"} <= set(m)


def test_outputs_written(analysed):
    res, _, out, (_, ti, _) = analysed
    assert set(res["artifacts"]) >= {"vector_report.json", "cos_heatmap.png", "cos_by_layer.png"}
    for name in res["artifacts"]:
        assert (out / name).stat().st_size > 0
    for png in ("cos_heatmap.png", "cos_by_layer.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    rows = list(csv.DictReader((out / "tensors.csv").open(encoding="utf-8")))
    assert {r["name"] for r in rows} == set(ti)
    assert storage.read_manifest(str(out))["digest"] == res["digest"]


def test_vocab_extension_compares_shared_rows_only(tmp_path):
    base, ti, tf = constructed()
    inst = {k: base[k] + ti[k] for k in base}
    dom = {k: base[k] + tf[k] for k in base}
    g = torch.Generator().manual_seed(0)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        dom[k] = torch.cat([dom[k], torch.randn(3, H, generator=g)])
    uris = [
        _write(tmp_path / "b", base),
        _write(tmp_path / "i", inst),
        _write(tmp_path / "d", dom, vocab=V + 3),
    ]
    res = analyze_vectors(*uris, str(tmp_path / "out"), str(tmp_path / "stage"))
    report = json.loads((tmp_path / "out" / "vector_report.json").read_text())
    t = {r["name"]: r for r in report["tensors"]}
    assert t["model.embed_tokens.weight"]["cos"] == pytest.approx(1.0)
    assert t["model.embed_tokens.weight"]["shared_rows"] == V and t["lm_head.weight"]["numel"] == V * H
    assert res["metrics"]["analyze/cos_global"] == pytest.approx(_expected_cos(list(ti), ti, tf), abs=1e-12)


def test_group_names():
    assert group_of("model.layers.3.self_attn.q_proj.weight") == (3, "self_attn.q_proj")
    assert group_of("model.layers.3.self_attn.q_proj.bias") == (3, "self_attn.q_proj")
    assert group_of("transformer.h.12.attn.c_attn.weight") == (12, "attn.c_attn")
    assert group_of("model.layers.0.mlp.experts.7.down_proj.weight") == (0, "mlp.experts.*.down_proj")
    assert group_of("model.embed_tokens.weight") == (None, "embed_tokens")
    assert group_of("model.norm.weight") == (None, "norm")
    assert group_of("lm_head.weight") == (None, "lm_head")
    assert group_of("transformer.wte.weight") == (None, "wte")


def test_tiny_llama_end_to_end(tmp_path):
    texts = ["当社の売上高は前期比で増加しました。", "配当金は一株当たり三十円とします。"] * 40
    tok = train_tokenizer(iter(texts), 200, tmp_path / "tok")
    shape = TinyModelConfig(
        vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2
    )
    base = init_llama(shape, tok, seed=0)
    folders = []
    for name, seed in (("base", 0), ("inst", 1), ("dom", 2)):
        m = copy.deepcopy(base)
        if seed:
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        save_model(m, tok, tmp_path / name, "# tiny")
        folders.append(str(tmp_path / name))
    res = analyze_vectors(*folders, str(tmp_path / "out"), str(tmp_path / "stage"))
    report = json.loads((tmp_path / "out" / "vector_report.json").read_text())
    groups = {r["group"] for r in report["groups"]}
    assert {f"layers.{i}.self_attn.q_proj" for i in range(3)} <= groups
    assert {"embed_tokens", "norm", "lm_head"} <= groups
    assert len(report["layers"]) == 3
    # independent noise: near-orthogonal vectors, |z| small
    assert abs(res["metrics"]["analyze/cos_global"]) < 0.05
    assert abs(report["global"]["z"]) < 5
    assert res["metrics"]["analyze/norm_ratio"] == pytest.approx(1.0, rel=0.05)


def test_nan_input_is_an_error_and_nothing_is_written(tmp_path):
    base, ti, tf = constructed()
    dom = {k: base[k] + tf[k] for k in base}
    dom["model.norm.weight"][2] = float("nan")
    uris = [
        _write(tmp_path / "b", base),
        _write(tmp_path / "i", {k: base[k] + ti[k] for k in base}),
        _write(tmp_path / "d", dom),
    ]
    with pytest.raises(ValueError, match="input domain tensor model.norm.weight"):
        analyze_vectors(*uris, str(tmp_path / "out"), str(tmp_path / "stage"))
    assert not (tmp_path / "out").exists()

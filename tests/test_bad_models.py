"""Bad input models fail early and clearly: the error names the folder or file, the tensor and the reason, and
nothing is written to the output location (issue 9, item 3).

Every case runs the real stage functions (merge, analyze, evaluate, pretrain) or the loader they share on tiny
Llamas generated here; corruptions are made by rewriting real files. Pickle and remote-code payloads create a
marker file when executed; each test checks that the marker never appears, and a control shows the payload is
live (so the check could fail).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from finmerge.config import EvaluateConfig, MergeConfig, PretrainConfig, TinyModelConfig
from finmerge.demo.models import init_llama, save_model, train_tokenizer
from finmerge.evaluate.run import evaluate_model
from finmerge.merge.analyze import analyze_vectors
from finmerge.merge.execute import MergeError, merge_models
from finmerge.merge.triplet import PreflightError
from finmerge.models import loading as modelio
from finmerge.train.pretrain import pretrain
from tests.helpers import TEXTS, TINY, tiny_model

ROLES = ("base", "instruct", "domain")
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
O_PROJ = "model.layers.1.self_attn.o_proj.weight"


# -- models and corruptions -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """A valid base / instruct / domain triplet (same tokenizer, independent random weights)."""
    root = tmp_path_factory.mktemp("good")
    return {r: tiny_model(root / r, seed=i, chat=r == "instruct") for i, r in enumerate(ROLES)}


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory) -> Path:
    """A tokenizer of the same vocab size as the triplet's, trained on other text: other ids for its tokens."""
    folder = tmp_path_factory.mktemp("othertok")
    train_tokenizer(iter(t[::-1] + "。配当" for t in TEXTS), TINY.vocab_size, folder)
    return folder


def copy_model(src: Path, dst: Path) -> Path:
    """A plain (manifest-less) copy of a model folder, as a user would hand one over."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_manifest.json"))
    return dst


def rewrite_header(path: Path, mutate) -> None:
    """Apply ``mutate`` to the JSON header of a safetensors file and write it back over the same data."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    mutate(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def edit_weights(folder: Path, edit) -> None:
    sd = load_file(str(folder / "model.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


def with_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


class Payload:
    """Unpickling this object creates ``marker`` (``open(marker, "w")``): an attacker's checkpoint would
    run any code the same way."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_model(src: Path, dst: Path, payload_marker: Path | None = None) -> Path:
    """``dst``: the model of ``src`` with its weights as ``pytorch_model.bin`` only (plus a payload)."""
    copy_model(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    if payload_marker is not None:
        sd["model.payload"] = Payload(payload_marker)
    torch.save(sd, dst / "pytorch_model.bin")
    return dst


# -- the stages under test, each given an output location --------------------------------------------------
def merge(models: dict, out: Path, **kw) -> dict:
    uris = [str(models[r]) for r in ROLES]
    return merge_models(*uris, str(out), MergeConfig(), str(out.parent / "stage"), **kw)


def analyze(models: dict, out: Path, **kw) -> dict:
    return analyze_vectors(*(str(models[r]) for r in ROLES), str(out), str(out.parent / "stage"), **kw)


def evaluate(model: Path, out: Path, **kw) -> dict:
    heldout = out.parent / "heldout.jsonl"  # something to evaluate, so the model itself is what is refused
    heldout.write_text('{"text": "当社の売上高は増加しました。"}\n', encoding="utf-8")
    return evaluate_model(
        str(model),
        str(out),
        EvaluateConfig(),
        label="bad",
        harness_dirs=[],
        heldout_uri=str(heldout),
        chat_uri=None,
        staging_dir=str(out.parent / "stage"),
        progress=False,
        **kw,
    )


def train(model: Path, out: Path, **kw) -> dict:
    # The model is checked before the token blocks are read, so no corpus is needed to see it refused.
    cfg = PretrainConfig(max_steps=1)
    return pretrain(str(model), str(out.parent / "no-tokens"), str(out), cfg, str(out.parent / "stage"), **kw)


def refused(run, models, out: Path, error=ValueError, *needles: str, **options) -> str:
    """``run(models, out, **options)`` must raise ``error`` whose message holds every needle, leaving no trace
    at ``out``."""
    with pytest.raises(error) as info:
        run(models, out, **options)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in:\n{msg}"
    assert not out.exists(), f"{out} was written"
    assert not list(out.parent.glob(".partial-*")), "a partial output folder was left behind"
    return msg


# -- truncated and lying safetensors ----------------------------------------------------------------------
CUTS = {
    "length-cut": lambda size: 5,  # not even the 8-byte header length
    "header-cut": lambda size: 100,  # inside the JSON header
    "data-cut": lambda size: size - 1000,  # the last tensors' bytes are missing
}
CUT_REASON = {
    "length-cut": "shorter than the 8-byte header length",
    "header-cut": "the header says it is",
    "data-cut": "needs data bytes",
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_truncated_safetensors_is_named_before_anything_is_written(good, tmp_path, cut):
    dom = copy_model(good["domain"], tmp_path / "dom")
    path = dom / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: CUTS[cut](len(data))])
    bad = {**good, "domain": dom}
    needles = (str(path), "truncated safetensors file", CUT_REASON[cut])
    refused(merge, bad, tmp_path / "merged", PreflightError, "domain", *needles)
    refused(analyze, bad, tmp_path / "vectors", PreflightError, *needles)
    if cut == "data-cut":  # the tensor whose bytes are cut off is named
        with pytest.raises(modelio.ModelFormatError, match=r"tensor model\.\S+ needs data bytes"):
            modelio.load_causal_lm(dom)


def test_truncated_model_refused_for_evaluation_and_pretraining(good, tmp_path):
    model = copy_model(good["base"], tmp_path / "model")
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-4096])
    needles = (str(path), "truncated safetensors file", "needs data bytes", "tensor model.")
    refused(evaluate, model, tmp_path / "eval", modelio.ModelFormatError, *needles)
    refused(train, model, tmp_path / "cpt", modelio.ModelFormatError, *needles)
    assert not (tmp_path / "cpt.checkpoints").exists()


def test_header_lying_about_shape_or_offsets(good, tmp_path):
    def shrink_shape(h):  # the data still spans the full tensor
        h[Q_PROJ]["shape"] = [h[Q_PROJ]["shape"][0] // 2, h[Q_PROJ]["shape"][1]]

    def beyond_the_file(h):
        begin, end = h[O_PROJ]["data_offsets"]
        h[O_PROJ]["data_offsets"] = [begin + 10**6, end + 10**6]

    def overlap(h):  # k_proj claims q_proj's bytes (both are 32 x 32)
        h["model.layers.0.self_attn.k_proj.weight"]["data_offsets"] = list(h[Q_PROJ]["data_offsets"])

    def bad_entry(h):
        h[Q_PROJ]["shape"] = "32x32"

    cases = [
        (
            shrink_shape,
            [Q_PROJ, "the header gives shape [16, 32] F32 (2048 bytes) but data_offsets span 4096"],
        ),
        (beyond_the_file, [O_PROJ, "needs data bytes"]),
        (overlap, ["model.layers.0.self_attn.k_proj.weight", Q_PROJ, "overlap tensor"]),
        (bad_entry, [Q_PROJ, "malformed header entry"]),
    ]
    for i, (mutate, needles) in enumerate(cases):
        inst = copy_model(good["instruct"], tmp_path / f"inst{i}")
        path = inst / "model.safetensors"
        rewrite_header(path, mutate)
        out = tmp_path / f"merged{i}"
        refused(merge, {**good, "instruct": inst}, out, PreflightError, str(path), *needles)
        out = tmp_path / f"eval{i}"
        refused(evaluate, inst, out, modelio.ModelFormatError, str(path), *needles)


def test_broken_index_is_named(good, tmp_path):
    dom = copy_model(good["domain"], tmp_path / "dom")
    shard = "model-00001-of-00001.safetensors"
    (dom / "model.safetensors").rename(dom / shard)
    index = dom / "model.safetensors.index.json"
    cases = {  # output folder: (the index's text, what the refusal names)
        "a": ({Q_PROJ: shard, "ghost.weight": "x"}, ["missing shard"]),
        "b": (
            {Q_PROJ: shard, "ghost.weight": shard},
            [str(index), f"tensor ghost.weight is listed in {shard} but is in no shard"],
        ),
        "c": ("{", [str(index), "unreadable index"]),
    }
    for out, (weight_map, needles) in cases.items():
        text = (
            weight_map
            if isinstance(weight_map, str)
            else json.dumps({"metadata": {}, "weight_map": weight_map})
        )
        index.write_text(text)
        refused(merge, {**good, "domain": dom}, tmp_path / out, PreflightError, *needles)


# -- non-finite values ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("role", "value"), [("base", float("inf")), ("instruct", float("nan"))])
def test_non_finite_input_named_with_its_file_in_merge_and_analyze(good, tmp_path, role, value):
    bad = copy_model(good[role], tmp_path / role)

    def poison(sd):
        sd[O_PROJ][3, 5] = value
        sd[O_PROJ][7, 1] = value

    edit_weights(bad, poison)
    models = {**good, role: bad}
    counts = "0 NaN and 2 Inf" if value == float("inf") else "2 NaN and 0 Inf"
    needles = (f"input {role} tensor {O_PROJ}", str(bad / "model.safetensors"), counts)
    refused(merge, models, tmp_path / "merged", MergeError, *needles)
    refused(analyze, models, tmp_path / "vectors", ValueError, *needles)


def test_non_finite_weights_refused_for_evaluation_and_pretraining(good, tmp_path):
    bad = copy_model(good["base"], tmp_path / "model")
    edit_weights(bad, lambda sd: sd["model.norm.weight"].__setitem__(0, float("nan")))
    needles = (str(bad / "model.safetensors"), "tensor model.norm.weight", "1 NaN and 0 Inf")
    refused(evaluate, bad, tmp_path / "eval", modelio.ModelFormatError, *needles)
    refused(train, bad, tmp_path / "cpt", modelio.ModelFormatError, *needles)


# -- mismatched shapes and architectures ------------------------------------------------------------------
@pytest.fixture(scope="module")
def wider(tmp_path_factory) -> Path:
    """The triplet's architecture with a wider MLP (intermediate_size 96 instead of 64)."""
    shape = TINY.model_copy(update={"intermediate_size": 96})
    return tiny_model(tmp_path_factory.mktemp("wider") / "wide", seed=3, shape=shape)


def test_mismatched_shapes_listed_for_merge_and_analyze(good, wider, tmp_path):
    models = {**good, "instruct": wider}
    for run, out in ((merge, tmp_path / "merged"), (analyze, tmp_path / "vectors")):
        msg = refused(
            run,
            models,
            out,
            PreflightError,
            "config intermediate_size differs: base=64, instruct=96, domain=64",
            "tensor model.layers.0.mlp.up_proj.weight: shape differs: base=[64, 32], instruct=[96, 32]",
            "tensor model.layers.1.mlp.down_proj.weight: shape differs",
        )
        assert msg.count("shape differs") == 6  # gate, up, down in both layers: every problem, not the first


def test_config_that_does_not_fit_its_weights_refused_at_load(good, tmp_path):
    # transformers would re-initialise the mismatched or missing tensors at random and carry on
    shape = copy_model(good["base"], tmp_path / "shape")
    with_config(shape, intermediate_size=48)
    needles = (
        str(shape),
        "weights do not fit config.json",
        "model.layers.0.mlp.up_proj.weight: shape [64, 32]",
    )
    refused(evaluate, shape, tmp_path / "eval", modelio.ModelFormatError, *needles)
    missing = copy_model(good["base"], tmp_path / "missing")
    edit_weights(missing, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    needles = ("model.layers.1.mlp.up_proj.weight: missing from the weight files",)
    refused(train, missing, tmp_path / "cpt", modelio.ModelFormatError, *needles)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    """A GPT-2-architecture model with the triplet's width and vocab (so only the architecture differs)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2") / "gpt2"
    cfg = GPT2Config(
        vocab_size=TINY.vocab_size, n_embd=TINY.hidden_size, n_layer=2, n_head=2, n_positions=128
    )
    GPT2LMHeadModel(cfg).save_pretrained(str(folder), safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def deeper(tmp_path_factory) -> Path:
    shape = TINY.model_copy(update={"num_hidden_layers": 3})
    return tiny_model(tmp_path_factory.mktemp("deeper") / "deep", seed=4, shape=shape)


def test_mismatched_architectures_listed(good, gpt2, deeper, tmp_path):
    msg = refused(
        merge,
        {**good, "domain": gpt2},
        tmp_path / "a",
        PreflightError,
        "config model_type differs: base='llama', instruct='llama', domain='gpt2'",
        "config architectures differs",
        "tensor transformer.h.0.attn.c_attn.weight: missing in base, instruct (present in domain)",
        f"tensor {Q_PROJ}: missing in domain (present in base, instruct)",
    )
    assert "hidden_size" not in msg  # n_embd is read as hidden_size: the same width is not reported
    refused(
        analyze,
        {**good, "base": deeper},
        tmp_path / "b",
        PreflightError,
        "config num_hidden_layers differs: base=3, instruct=2, domain=2",
        "tensor model.layers.2.mlp.up_proj.weight: missing in instruct, domain (present in base)",
    )


# -- mismatched tokenizers --------------------------------------------------------------------------------
def test_tokenizer_with_other_ids_for_the_same_tokens_refused(good, other_tokenizer, tmp_path):
    # same vocab_size, so the tensors have the same shapes: only the tokenizers show that row i differs
    for role in ("instruct", "domain"):
        bad = copy_model(good[role], tmp_path / role)
        shutil.copy(other_tokenizer / "tokenizer.json", bad / "tokenizer.json")
        models = {**good, role: bad}
        for run, out in ((merge, tmp_path / f"merged-{role}"), (analyze, tmp_path / f"vectors-{role}")):
            refused(
                run,
                models,
                out,
                PreflightError,
                f"vocab: the {role} tokenizer ({bad}) does not match the base's",
                "base token(s) missing or at another id",
            )


def test_tokenizer_with_other_vocab_refused_and_broken_tokenizer_named(good, other_tokenizer, tmp_path):
    dom = copy_model(good["domain"], tmp_path / "dom")
    shutil.copy(other_tokenizer / "tokenizer.json", dom / "tokenizer.json")
    tok = json.loads((dom / "tokenizer.json").read_text())
    tok["added_tokens"].append({**tok["added_tokens"][-1], "id": TINY.vocab_size, "content": "<決算>"})
    (dom / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    edit_weights(
        dom,
        lambda sd: sd.update(
            {
                k: torch.cat([sd[k], torch.zeros(1, TINY.hidden_size)])
                for k in ("model.embed_tokens.weight", "lm_head.weight")
            }
        ),
    )
    with_config(dom, vocab_size=TINY.vocab_size + 1)
    refused(
        merge,
        {**good, "domain": dom},
        tmp_path / "a",
        PreflightError,
        f"vocab: the domain tokenizer ({dom}) does not extend the base's",
    )
    inst = copy_model(good["instruct"], tmp_path / "inst")
    (inst / "tokenizer.json").write_text('{"model": {"vocab": ')
    refused(
        merge,
        {**good, "instruct": inst},
        tmp_path / "b",
        PreflightError,
        str(inst / "tokenizer.json"),
        "unreadable tokenizer",
    )


def test_added_token_renamed_in_place_is_accepted(good, tmp_path):
    # A chat model that turns a reserved added token into its own marker keeps the row: not a mismatch.
    inst = copy_model(good["instruct"], tmp_path / "inst")
    tok = json.loads((inst / "tokenizer.json").read_text())
    pad = next(t for t in tok["added_tokens"] if t["content"] == "<pad>")
    pad["content"] = "<|im_start|>"
    (inst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    res = merge({**good, "instruct": inst}, tmp_path / "merged")
    assert Path(res["uri"]) == tmp_path / "merged" and (tmp_path / "merged" / "model.safetensors").exists()


# -- config.json ------------------------------------------------------------------------------------------
def test_missing_or_broken_config_named_for_every_model(good, tmp_path):
    base = copy_model(good["base"], tmp_path / "base")
    (base / "config.json").unlink()
    dom = copy_model(good["domain"], tmp_path / "dom")
    (dom / "config.json").write_text('{"model_type": "llama",')
    inst = copy_model(good["instruct"], tmp_path / "inst")
    (inst / "config.json").write_text("[1, 2]")
    bad = {"base": base, "instruct": inst, "domain": dom}
    msg = refused(
        merge,
        bad,
        tmp_path / "merged",
        PreflightError,
        f"{base / 'config.json'}: missing",
        f"{inst / 'config.json'}: expected a JSON object, got list",
        f"{dom / 'config.json'}: invalid JSON at line 1",
    )
    assert msg.startswith("3 problem(s)")  # all three reported at once
    refused(analyze, bad, tmp_path / "vec", PreflightError, "3 problem(s)")
    refused(
        evaluate,
        dom,
        tmp_path / "eval",
        modelio.ModelFormatError,
        str(dom / "config.json"),
    )
    refused(
        train,
        base,
        tmp_path / "cpt",
        modelio.ModelFormatError,
        "config.json: missing",
    )


# -- custom code ------------------------------------------------------------------------------------------
def remote_code_model(src: Path, dst: Path, marker: Path) -> Path:
    """A model whose config.json asks for ``evil.py``, which creates ``marker`` when imported."""
    copy_model(src, dst)
    (dst / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n\n\nclass EvilConfig:\n    pass\n")
    with_config(dst, auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    return dst


def test_auto_map_refused_without_trust_and_no_code_runs(good, tmp_path):
    marker = tmp_path / "code-ran"
    evil = remote_code_model(good["domain"], tmp_path / "evil", marker)
    needle = "set `models.trust_remote_code: true`"
    refused(
        merge,
        {**good, "domain": evil},
        tmp_path / "m",
        PreflightError,
        "auto_map",
        needle,
    )
    for run, out in ((evaluate, tmp_path / "eval"), (train, tmp_path / "cpt")):
        refused(
            run,
            evil,
            out,
            modelio.ModelFormatError,
            str(evil / "config.json"),
            "evil.EvilModel",
            "refused, nothing was run",
            needle,
        )
    # a custom tokenizer declared in tokenizer_config.json is refused too
    tok_only = copy_model(good["base"], tmp_path / "tok")
    tc = json.loads((tok_only / "tokenizer_config.json").read_text())
    tc["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (tok_only / "tokenizer_config.json").write_text(json.dumps(tc))
    shutil.copy(evil / "evil.py", tok_only / "evil.py")
    with pytest.raises(modelio.ModelFormatError, match="tokenizer_config.json: auto_map"):
        modelio.load_tokenizer(tok_only)
    assert not marker.exists(), "custom code from the model folder was executed"
    # control: the payload is live, so the check above could have failed
    subprocess.run([sys.executable, str(evil / "evil.py")], check=True, capture_output=True)
    assert marker.exists()


# -- pickle checkpoints -----------------------------------------------------------------------------------
def test_pickle_refused_by_default_without_being_opened(good, tmp_path):
    marker = tmp_path / "unpickled"
    pk = pickle_model(good["domain"], tmp_path / "pk", payload_marker=marker)
    needles = ("pytorch_model.bin", "refused without opening them", "`models.allow_pickle: true`")
    for run, out in ((merge, tmp_path / "m"), (analyze, tmp_path / "v")):
        refused(run, {**good, "domain": pk}, out, PreflightError, str(pk), *needles)
    for run, out in ((evaluate, tmp_path / "eval"), (train, tmp_path / "cpt")):
        refused(run, pk, out, modelio.ModelFormatError, str(pk), *needles)
    assert not marker.exists(), "the pickle was unpickled"
    assert not list((tmp_path / "stage").rglob("*.safetensors")), "something was converted"


def test_malicious_pickle_refused_by_weights_only_when_allowed(good, tmp_path):
    marker = tmp_path / "unpickled"
    pk = pickle_model(good["domain"], tmp_path / "pk", payload_marker=marker)
    needles = (str(pk / "pytorch_model.bin"), "refused by torch.load(weights_only=True)", "io.open")
    refused(merge, {**good, "domain": pk}, tmp_path / "m", PreflightError, *needles, allow_pickle=True)
    for run, out in ((evaluate, tmp_path / "eval"), (train, tmp_path / "cpt")):
        refused(run, pk, out, modelio.ModelFormatError, *needles, allow_pickle=True)
    assert not marker.exists(), "the pickle's code ran"
    inputs = tmp_path / "stage" / "inputs"
    assert not list(inputs.glob("pickle-*")) and not list(inputs.glob(".partial-*")), "a conversion was kept"
    # control: a twin payload does run under full unpickling, so the checks above could have failed
    twin = tmp_path / "twin-unpickled"
    torch.save({"x": Payload(twin)}, tmp_path / "twin.bin")
    torch.load(tmp_path / "twin.bin", weights_only=False)
    assert twin.exists()


def test_pickle_on_s3_refused_before_download_and_s3_output_untouched(good, tmp_path, s3_bucket):
    from finmerge.core import storage

    marker = tmp_path / "unpickled"
    pk = pickle_model(good["domain"], tmp_path / "pk", payload_marker=marker)
    pk_uri, out_uri = f"s3://{s3_bucket}/models/pk", f"s3://{s3_bucket}/merged"
    fs, root = storage.filesystem(pk_uri)
    for f in pk.iterdir():
        fs.put_file(str(f), f"{root}/{f.name}")
    stage = tmp_path / "stage"
    uris = [str(good["base"]), str(good["instruct"]), pk_uri]
    with pytest.raises(PreflightError) as info:
        merge_models(*uris, out_uri, MergeConfig(), str(stage))
    for needle in (
        pk_uri,
        "pytorch_model.bin",
        "refused without downloading or opening",
        "models.allow_pickle: true",
    ):
        assert needle in str(info.value)
    assert not list(stage.rglob("pytorch_model.bin")), "the pickle was downloaded"
    with pytest.raises(PreflightError, match=r"refused by torch\.load\(weights_only=True\)"):
        merge_models(*uris, out_uri, MergeConfig(), str(stage), allow_pickle=True)
    assert not marker.exists(), "the pickle's code ran"
    assert not storage.exists(out_uri) and not list((stage / "outputs").glob(".partial-*"))


def test_pickle_with_non_tensor_entries_refused_when_allowed(good, tmp_path):
    pk = pickle_model(good["base"], tmp_path / "pk")
    sd = torch.load(pk / "pytorch_model.bin", weights_only=True)
    torch.save({"model": sd, "step": 3}, pk / "pytorch_model.bin")  # a training checkpoint, not a state dict
    refused(
        evaluate,
        pk,
        tmp_path / "eval",
        modelio.ModelFormatError,
        str(pk / "pytorch_model.bin"),
        "not a flat state dict of tensors",
        allow_pickle=True,
    )


def test_allowed_pickle_is_converted_verified_and_merges_like_safetensors(good, tmp_path):
    pk = pickle_model(good["domain"], tmp_path / "pk")
    want = merge(good, tmp_path / "from-safetensors")
    got = merge({**good, "domain": pk}, tmp_path / "from-pickle", allow_pickle=True)
    a = load_file(str(Path(want["uri"]) / "model.safetensors"))
    b = load_file(str(Path(got["uri"]) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    staged = modelio.stage_model(str(pk), str(tmp_path / "stage"), allow_pickle=True)
    assert staged.parent == tmp_path / "stage" / "inputs" and staged.name.startswith("pickle-")
    assert json.loads((staged / modelio.CONVERTED).read_text())["tensors"] == len(a)
    assert not list(staged.glob("*.bin")) and (staged / "tokenizer.json").exists()
    assert not (pk / "model.safetensors").exists()  # the user's folder is left as it was
    # the loaders used by evaluate / pretrain take the converted folder
    model = modelio.load_causal_lm(staged)
    src = load_file(str(good["domain"] / "model.safetensors"))
    assert all(torch.equal(p, src[n]) for n, p in model.state_dict().items())


def test_sharded_and_tied_pickles_convert(tmp_path):
    """A tied-embedding Llama saved as two pickle shards plus an index loads with the same logits."""
    tok = train_tokenizer(iter(TEXTS), 300, tmp_path / "tok")
    shape = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=64)  # fmt: skip
    model = init_llama(shape, tok, seed=5)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    folder = tmp_path / "tied"
    save_model(model, tok, folder, "# tied")
    (folder / "model.safetensors").unlink()
    sd = model.state_dict()  # lm_head.weight and embed_tokens.weight share one storage
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
    names = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for file, keys in shards.items():
        torch.save({k: sd[k] for k in keys}, folder / file)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (folder / modelio.PICKLE_INDEX).write_text(json.dumps(index))
    (folder / "training_args.bin").write_bytes(b"not opened")
    staged = modelio.stage_model(str(folder), str(tmp_path / "stage"), allow_pickle=True)
    assert (staged / "model.safetensors.index.json").exists() and not (staged / "training_args.bin").exists()
    loaded = modelio.load_causal_lm(staged)
    ids = tok("当社の売上高", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    # converted once: the same sources give the same staged folder
    assert modelio.stage_model(str(folder), str(tmp_path / "stage"), allow_pickle=True) == staged


def test_copy_of_good_triplet_still_merges(good, tmp_path):
    """The checks above refuse bad inputs only: the unchanged triplet (plain copies) merges and analyses."""
    plain = {r: copy_model(good[r], tmp_path / r) for r in ROLES}
    assert merge(plain, tmp_path / "merged")["counts"]["tensors_merged"] > 0
    assert analyze(plain, tmp_path / "vectors")["counts"]["tensors"] > 0
    assert modelio.load_causal_lm(plain["base"]) is not None

"""The evaluation stage on tiny local models: MC log-likelihoods against an independent computation,
perplexity, the finance and general chat probes, confidence intervals, skipped tasks and the comparison
report. All data is synthetic."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from finmerge.config import EvaluateConfig
from finmerge.core import storage
from finmerge.demo.chat import ADHERENCE_REGEX, CHAT_TEMPLATE
from finmerge.demo.models import init_llama, save_model, train_tokenizer
from finmerge.evaluate import harness as fin_harness
from finmerge.evaluate import run as ev
from tests.helpers import TINY_512

WORDS = [
    "売上高",
    "営業利益",
    "純利益",
    "増加",
    "減少",
    "前年",
    "比較",
    "回答",
    "会社",
    "資産",
    "負債",
    "株式",
]
WORDS += ["配当", "金利", "回", "甲案", "乙案", "丙案", "丁案", "質問", "選択肢", "記述"]
SHAPE = TINY_512
CHOICES = ["増加した", "減少した", "横ばい", "判断できない"]


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "。" for _ in range(n)]


def _mc_items(n: int, choices, *, context: str = "", vary: bool = True) -> list[dict]:
    items = []
    for k in range(n):
        ch = choices if not vary or k % 3 else choices[:2]  # mixed choice counts, like security_sales_1
        items.append(
            {
                "id": f"syn-{k}",
                "question": f"架空の会社{k}の売上高について、正しいものはどれか。" + "前年比較" * (k % 4),
                "context": context if k % 2 else "",
                "choices": [{"id": i, "text": t} for i, t in enumerate(ch)],
                "answer": k % len(ch),
                "comment": "SENTINEL",
            }
        )
    return items


def _write_task(root: Path, name: str, items: list[dict]) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    doc = {"data-type": "multiple-choice-question", "data-name": name, "data": items}
    (root / name / "data.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    tok = train_tokenizer(_texts(400, 0), 400, root / "tok", chat_template=CHAT_TEMPLATE)
    model = init_llama(SHAPE, tok, seed=0)
    save_model(model, tok, root / "random", "random tiny model")

    harness = root / "datasets"
    _write_task(harness, "demo_fin", _mc_items(10, CHOICES, context="資料：架空の数値"))
    fp2 = _mc_items(
        6, ["１", "２", "３", "４"], context="１．記述甲\n２．記述乙\n３．記述丙\n４．記述丁", vary=False
    )
    for it in fp2:
        it["context"] = "１．記述甲\n２．記述乙\n３．記述丙\n４．記述丁"
    _write_task(harness, "fp2", fp2)
    (harness / "chabsa").mkdir()  # a task folder with no data.json
    (harness / "broken").mkdir()
    (harness / "broken" / "data.json").write_text("{oops", encoding="utf-8")

    heldout = _write_jsonl(root / "heldout.jsonl", [{"text": t} for t in _texts(80, 1)])
    questions = [
        {
            "id": f"c{k}",
            "question": "架空の会社の売上高は" + "前年" * k + "どうなったか。",
            "answers": ["増加"],
        }
        for k in range(5)
    ]
    chat = _write_jsonl(root / "chat.jsonl", questions)
    general = [
        {"id": f"g{k}", "question": f"桜井町の名物は何ですか。{'今日は' * k}", "answers": ["うどん"]}
        for k in range(4)
    ]
    general = _write_jsonl(root / "general.jsonl", general)
    return {
        "root": root,
        "tok": tok,
        "harness": str(harness),
        "heldout": heldout,
        "chat": chat,
        "general": general,
    }


def _run(world, name, *, version="1.0-0.2.1", batch_size=8, model="random", heldout=True, chat=True, **kw):
    cfg = EvaluateConfig(
        prompt_version=version,
        batch_size=batch_size,
        max_new_tokens=12,
        max_heldout_tokens=700,
        kv_reuse=kw.pop("kv", True),
        bootstrap_samples=kw.pop("bootstrap_samples", 1000),
    )
    root = world["root"]
    return ev.evaluate_model(
        str(root / model),
        str(root / "out" / name),
        cfg,
        label=name,
        harness_dirs=kw.pop("harness_dirs", [world["harness"]]),
        heldout_uri=world["heldout"] if heldout else None,
        chat_uri=world["chat"] if chat else None,
        staging_dir=str(root / "staging"),
        progress=False,
        **kw,
    )


def _samples(result, task) -> list[dict]:
    path = storage.local_path(result["uri"]) / f"samples_{task}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _load(world, model="random"):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(world["root"] / model), dtype=torch.float32)
    return m.eval()


@torch.inference_mode()
def _reference_ll(model, tok, context: str, continuation: str, max_length: int | None = None) -> float:
    """Independent straightforward lm-eval computation: one unpadded forward per (ctx, cont)."""
    n_ws = len(context) - len(context.rstrip())
    if n_ws:
        context, continuation = context[:-n_ws], context[-n_ws:] + continuation
    whole = tok.encode(context + continuation, add_special_tokens=False)
    ctx_ids = tok.encode(context, add_special_tokens=False)
    cont_ids = whole[len(ctx_ids) :]
    full = ctx_ids + cont_ids
    if max_length is not None:
        full = full[-(max_length + 1) :]
    logits = model(torch.tensor([full[:-1]])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    first = len(full) - 1 - len(cont_ids)
    return float(sum(logp[first + j, t] for j, t in enumerate(cont_ids)))


@pytest.fixture(scope="module")
def main_run(world):
    return _run(world, "main", general_uri=world["general"])


SCORES = {
    "ppl",
    "harness/demo_fin/acc",
    "harness/demo_fin/acc_norm",
    "harness/fp2/acc",
    "harness/fp2/acc_norm",
    "harness/avg",
    "chat/adherence",
    "chat/answer_acc",
    "general/adherence",
    "general/answer_acc",
}


def test_output_layout_and_skips(world, main_run):
    out = storage.local_path(main_run["uri"])
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "_manifest.json",
        "chat_samples.jsonl",
        "general_samples.jsonl",
        "results.json",
        "samples_demo_fin-1.0-0.2.1.jsonl",
        "samples_fp2-1.0-0.2.1.jsonl",
    ]
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(report["results"]) == {"demo_fin-1.0-0.2.1", "fp2-1.0-0.2.1"}
    r = report["results"]["demo_fin-1.0-0.2.1"]
    assert r["alias"] == "demo_fin-1.0-0.2.1" and 0 <= r["acc,none"] <= 1 and 0 <= r["acc_norm,none"] <= 1
    cfg = report["config"]
    assert cfg["prompt_versions"] == ["1.0-0.2.1"] and cfg["batch_size"] == 8 and cfg["dtype"] == "float32"
    assert cfg["kv_reuse"] is True
    assert (
        cfg["device"] == "cpu" and cfg["torch_version"] == torch.__version__ and cfg["transformers_version"]
    )
    skipped = report["finmerge"]["skipped"]
    assert set(skipped) == {"chabsa", "broken"}
    assert "no data.json" in skipped["chabsa"] and "unreadable" in skipped["broken"]
    assert report["finmerge"]["ppl"]["ppl"] == pytest.approx(main_run["metrics"]["ppl"])
    assert report["finmerge"]["chat"]["template"] == "tokenizer"

    m = main_run["metrics"]
    assert set(m) == SCORES | {f"{s}/ci_{end}" for s in SCORES for end in ("low", "high")}
    assert m["harness/avg"] == pytest.approx((m["harness/demo_fin/acc"] + m["harness/fp2/acc"]) / 2)
    assert main_run["label"] == "main" and main_run["artifacts"] == ["results.json"]
    assert main_run["counts"]["harness/items"] == 16 and main_run["counts"]["harness/skipped"] == 2
    assert main_run["counts"]["chat/questions"] == 5 and main_run["counts"]["general/questions"] == 4
    assert storage.read_manifest(main_run["uri"])["meta"]["metrics"] == m
    # no item text leaks into the samples
    assert "SENTINEL" not in (out / "samples_demo_fin-1.0-0.2.1.jsonl").read_text(encoding="utf-8")


def _jsonl_rows(result, name: str) -> list[dict]:
    text = (storage.local_path(result["uri"]) / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_every_score_has_its_interval(main_run):
    """Each score lies in its interval, and the interval is the seeded bootstrap of the units the stage
    scored (the samples files, the chat rows, the perplexity windows), recomputed here from the folder."""
    from finmerge.evaluate import bootstrap
    from finmerge.evaluate.intervals import seed_for

    m = main_run["metrics"]
    for name in SCORES:
        assert m[f"{name}/ci_low"] <= m[name] <= m[f"{name}/ci_high"], name
    report = json.loads((storage.local_path(main_run["uri"]) / "results.json").read_text(encoding="utf-8"))
    info = report["finmerge"]["intervals"]
    assert info["samples"] == 1000 and info["level"] == 0.95 and info["seed"] == 0
    assert {k: tuple(v) for k, v in info["scores"].items()} == {
        name: (m[f"{name}/ci_low"], m[f"{name}/ci_high"]) for name in SCORES
    }

    def ci(name):
        return (m[f"{name}/ci_low"], m[f"{name}/ci_high"])

    groups = []
    for task in ("demo_fin", "fp2"):
        samples = _samples(main_run, f"{task}-1.0-0.2.1")
        for metric in ("acc", "acc_norm"):
            name = f"harness/{task}/{metric}"
            values = [s[metric] for s in samples]
            assert ci(name) == bootstrap.mean_ci(values, 1000, seed_for(0, name))
        groups.append(
            bootstrap.mean_replicates([s["acc"] for s in samples], 1000, seed_for(0, f"harness/{task}/acc"))
        )
    if m["harness/demo_fin/acc"] and m["harness/fp2/acc"]:  # both count in the leaderboard average
        assert ci("harness/avg") == bootstrap.average_interval(groups)
    for prefix, file in (("chat", "chat_samples.jsonl"), ("general", "general_samples.jsonl")):
        rows = _jsonl_rows(main_run, file)
        for score, field in (("adherence", "adheres"), ("answer_acc", "correct")):
            values = [float(r[field]) for r in rows]
            assert ci(f"{prefix}/{score}") == bootstrap.mean_ci(
                values, 1000, seed_for(0, f"{prefix}/{score}")
            )
    # perplexity: the windows' summed NLL add up (in order) to the reported value, bit for bit
    ppl = report["finmerge"]["ppl"]
    total = 0.0
    for w in ppl["window_nll"]:
        total += w
    assert total == ppl["nll_sum"] and sum(ppl["window_tokens"]) == ppl["predicted_tokens"]
    assert math.exp(total / ppl["predicted_tokens"]) == m["ppl"]
    assert ci("ppl") == bootstrap.ratio_ci(ppl["window_nll"], ppl["window_tokens"], 1000, seed_for(0, "ppl"))


def test_general_probe(world, main_run):
    rows = _jsonl_rows(main_run, "general_samples.jsonl")
    assert [r["id"] for r in rows] == [f"g{k}" for k in range(4)]
    assert all(r["answers"] == ["うどん"] and r["new_tokens"] <= 12 for r in rows)
    m = main_run["metrics"]
    assert m["general/answer_acc"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    assert m["general/adherence"] == pytest.approx(np.mean([r["adheres"] for r in rows]))
    report = json.loads((storage.local_path(main_run["uri"]) / "results.json").read_text(encoding="utf-8"))
    assert report["finmerge"]["general"]["n"] == 4 and report["finmerge"]["chat"]["n"] == 5
    # the general probe alone is something to evaluate
    alone = _run(
        world, "general-only", heldout=False, chat=False, harness_dirs=[], general_uri=world["general"]
    )
    assert alone["metrics"]["general/answer_acc"] == m["general/answer_acc"]
    assert not any(k.startswith("chat/") for k in alone["metrics"])


def test_no_intervals_when_bootstrap_is_off(world):
    res = _run(world, "noci", heldout=False, chat=False, tasks=["fp2"], bootstrap_samples=0)
    assert set(res["metrics"]) == {"harness/fp2/acc", "harness/fp2/acc_norm", "harness/avg"}
    report = json.loads((storage.local_path(res["uri"]) / "results.json").read_text(encoding="utf-8"))
    assert report["finmerge"]["intervals"]["scores"] == {}


@pytest.mark.parametrize("version", ["1.0-0.2.1", "default", "1.0-0.3"])
def test_loglikelihoods_match_reference(world, main_run, version):
    result = (
        main_run
        if version == "1.0-0.2.1"
        else _run(world, f"v{version}", version=version, heldout=False, chat=False)
    )
    model, tok = _load(world), world["tok"]
    tasks = {t.name: t for t in fin_harness.discover_tasks([world["harness"]]).tasks}
    checked = 0
    for name, task in tasks.items():
        samples = _samples(result, fin_harness.harness_task_name(name, version))
        assert [s["id"] for s in samples] == [it.id for it in task.items]
        for item, s in zip(task.items, samples, strict=True):
            prompt = fin_harness.render(item, task.layout, version)
            ref = [
                _reference_ll(model, tok, prompt.context, prompt.target_delimiter + c) for c in prompt.choices
            ]
            np.testing.assert_allclose(s["ll"], ref, atol=1e-4, rtol=0)
            checked += len(ref)
    assert checked > 50


def test_batch_size_one_agrees(world, main_run):
    one = _run(world, "bs1", batch_size=1, heldout=False, chat=False)
    for task in ("demo_fin-1.0-0.2.1", "fp2-1.0-0.2.1"):
        a, b = _samples(main_run, task), _samples(one, task)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x["ll"], y["ll"], atol=1e-5, rtol=0)
    assert one["metrics"]["harness/avg"] == main_run["metrics"]["harness/avg"]


def test_letter_choices_share_forward_rows(world):
    rows = _run(world, "letters-rows", version="default", heldout=False, chat=False, kv=False)["counts"]
    # row path: letters differ only in their last token, so one forward row per item (lm-eval's logits cache)
    assert rows["harness/demo_fin/forward_rows"] == rows["harness/demo_fin/items"]
    assert rows["harness/demo_fin/requests"] > rows["harness/demo_fin/items"]
    # KV path: the shared description runs once, so far fewer tokens go through the model
    kv = _run(world, "letters-kv", version="default", heldout=False, chat=False)["counts"]
    assert kv["harness/demo_fin/shared_prefix_tokens"] > 10
    assert kv["harness/demo_fin/forward_tokens"] < 0.7 * rows["harness/demo_fin/forward_tokens"]


def test_left_truncation_matches_reference(world):
    res = _run(
        world, "trunc", version="1.0-0.3", max_length=24, heldout=False, chat=False, tasks=["demo_fin"]
    )
    assert res["counts"]["harness/demo_fin/truncated"] == res["counts"]["harness/demo_fin/requests"]
    assert set(res["skipped"]) == set()  # `tasks` restricts discovery; nothing requested is missing
    model, tok = _load(world), world["tok"]
    task = fin_harness.discover_tasks([world["harness"]], only=["demo_fin"]).tasks[0]
    for item, s in zip(task.items, _samples(res, "demo_fin-1.0-0.3"), strict=True):
        prompt = fin_harness.render(item, task.layout, "1.0-0.3")
        ref = [_reference_ll(model, tok, prompt.context, c, max_length=24) for c in prompt.choices]
        np.testing.assert_allclose(s["ll"], ref, atol=1e-4, rtol=0)


def test_acc_and_acc_norm():
    # raw: choice 0 wins; per character: choice 1 (-6/6 = -1 > -5/2 = -2.5)
    assert ev.mc_prediction([-5.0, -6.0], ["ab", "abcdef"], gold=1) == {
        "pred": 0,
        "acc": 0.0,
        "pred_norm": 1,
        "acc_norm": 1.0,
    }
    # ties: the first maximum wins, as np.argmax
    assert ev.mc_prediction([-1.0, -1.0], ["x", "y"], gold=1)["pred"] == 0
    # Japanese length counts characters, not bytes
    assert ev.mc_prediction([-3.0, -4.0], ["増加", "判断不能"], gold=1)["pred_norm"] == 1


def test_samples_metrics_consistent(main_run):
    for task, key in (("demo_fin-1.0-0.2.1", "demo_fin"), ("fp2-1.0-0.2.1", "fp2")):
        samples = _samples(main_run, task)
        for s in samples:
            assert s["pred"] == int(np.argmax(s["ll"])) and s["acc"] == float(s["pred"] == s["gold"])
        assert main_run["metrics"][f"harness/{key}/acc"] == pytest.approx(
            np.mean([s["acc"] for s in samples])
        )
        assert main_run["metrics"][f"harness/{key}/acc_norm"] == pytest.approx(
            np.mean([s["acc_norm"] for s in samples])
        )


def test_empty_continuation_detected(world, monkeypatch):
    tok = world["tok"]
    ctx, cont = "株式回", "答"  # "回答" is one token of this tokenizer; "回" is one too
    assert len(tok.encode(ctx + cont, add_special_tokens=False)) == len(
        tok.encode(ctx, add_special_tokens=False)
    )
    enc = ev.encode_pair(tok, ctx, cont)
    assert enc.empty and enc.boundary_merge
    ok = ev.encode_pair(tok, "株式", "回答")
    assert not ok.empty and not ok.boundary_merge

    model = _load(world)
    lls, stats = ev.score_loglikelihoods(
        model,
        [(enc.ctx_ids, enc.cont_ids), (ok.ctx_ids, ok.cont_ids)],
        batch_size=4,
        max_length=512,
        device="cpu",
        progress=False,
    )
    assert lls[0] == 0.0 and lls[1] < 0 and stats["forward_rows"] == 1

    # counted per task when the rendered requests hit the problem
    monkeypatch.setattr(
        fin_harness, "requests_for", lambda p: [(ctx, cont)] + [(ctx, "増加")] * (len(p.choices) - 1)
    )
    task = fin_harness.discover_tasks([world["harness"]], only=["demo_fin"]).tasks[0]
    res = ev.score_task(
        model, tok, task, "1.0-0.2.1", batch_size=4, max_length=512, device="cpu", progress=False
    )
    assert res["stats"]["empty_continuations"] == len(task.items)
    assert res["stats"]["boundary_merges"] >= len(task.items)
    assert all(s["ll"][0] == 0.0 and s["ll"][1] < 0 for s in res["samples"])


class _ThirdPartyModel(torch.nn.Module):
    """A causal LM as some remote-code models are: no KV cache returned, and (``honours_mask=False``) its own
    causal mask instead of the attention mask it is given."""

    def __init__(self, inner, honours_mask: bool):
        super().__init__()
        self.inner, self.config, self.honours_mask = inner, inner.config, honours_mask

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        mask = attention_mask if self.honours_mask else None
        return self.inner(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False
        )


def test_packed_scoring_without_cache_or_custom_mask_agrees(world):
    from finmerge.evaluate.mc_eval import encode_items

    model, tok = _load(world), world["tok"]
    task = fin_harness.discover_tasks([world["harness"]], only=["demo_fin"]).tasks[0]
    requests, _, _ = encode_items(
        tok, [fin_harness.render(it, task.layout, "1.0-0.2.1") for it in task.items]
    )
    kw = {"batch_size": 4, "max_length": 512, "device": "cpu", "progress": False}
    ref, stats = ev.score_items(model, requests, **kw)
    assert stats["shared_prefix_tokens"] > 0 and stats["kv_items"] == len(requests)
    assert stats["forward_rows"] < len(requests)  # items share packed rows
    assert 0 <= stats["padding_tokens"] < stats["forward_tokens"] < stats["min_tokens"]
    # no KV cache: packed without the shared prefix
    no_cache, stats = ev.score_items(_ThirdPartyModel(model, honours_mask=True), requests, **kw)
    assert stats["shared_prefix_tokens"] == 0 and stats["kv_items"] == len(requests)
    assert stats["packed_check_failed"] == 0
    # the custom mask ignored: the self-check notices, and lm-eval's rows score every item
    blind, stats = ev.score_items(_ThirdPartyModel(model, honours_mask=False), requests, **kw)
    assert (
        stats["packed_check_failed"] == 1 and stats["row_items"] == len(requests) and stats["kv_items"] == 0
    )
    for a, b, c in zip(ref, no_cache, blind, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)
        np.testing.assert_allclose(c, a, atol=1e-4, rtol=0)


def test_missing_harness_folder_or_task_is_an_error_before_the_model_loads(world):
    missing = str(world["root"] / "no-such-datasets")
    empty = world["root"] / "empty-datasets"
    empty.mkdir(exist_ok=True)
    cases = [
        ({"harness_dirs": [missing]}, f"harness folder {missing}: harness folder not found"),
        ({"harness_dirs": [str(empty)]}, f"harness folder {empty} holds no task"),
        (
            {"harness_dirs": [world["harness"]], "tasks": ["cma_basic"]},
            "task 'cma_basic': task folder not found",
        ),
        ({"harness_dirs": [f"{world['harness']}:fp22"]}, "task 'fp22'"),
        ({"harness_dirs": []}, "nothing to evaluate"),
        (
            {"harness_dirs": [world["harness"]], "general_uri": f"{missing}.jsonl"},
            f"general questions {missing}.jsonl: not found",
        ),
    ]
    for kw, message in cases:
        out = world["root"] / "out" / "refused"
        with pytest.raises(ev.NothingToEvaluate, match=re.escape(message)):
            _run(world, "refused", heldout=False, chat=False, **kw)
        assert not out.exists()


def test_render_failure_skips_task(world, monkeypatch):
    real = fin_harness.render

    def flaky(item, layout, version):
        if layout == "fp2":
            raise ValueError("synthetic rendering failure")
        return real(item, layout, version)

    monkeypatch.setattr(fin_harness, "render", flaky)
    res = _run(world, "flaky", heldout=False, chat=False)
    assert "synthetic rendering failure" in res["skipped"]["fp2"]
    assert "harness/demo_fin/acc" in res["metrics"] and "harness/fp2/acc" not in res["metrics"]


def test_everything_on_s3(world, s3_bucket):
    root = world["root"]
    base = f"s3://{s3_bucket}/eval"
    for path in Path(world["harness"]).rglob("*"):
        if path.is_file():
            storage.write_bytes(
                f"{base}/datasets/{path.relative_to(world['harness']).as_posix()}", path.read_bytes()
            )
    for path in (root / "random").iterdir():
        storage.write_bytes(f"{base}/models/random/{path.name}", path.read_bytes())
    storage.write_bytes(f"{base}/heldout.jsonl", Path(world["heldout"]).read_bytes())
    storage.write_bytes(f"{base}/chat.jsonl", Path(world["chat"]).read_bytes())
    cfg = EvaluateConfig(batch_size=8, max_new_tokens=12, max_heldout_tokens=700)
    res = ev.evaluate_model(
        f"{base}/models/random",
        f"{base}/out/random",
        cfg,
        label="base",
        harness_dirs=[f"{base}/datasets"],
        heldout_uri=f"{base}/heldout.jsonl",
        chat_uri=f"{base}/chat.jsonl",
        staging_dir=str(root / "s3staging"),
        progress=False,
    )
    assert res["uri"] == f"{base}/out/random"
    manifest = storage.read_manifest(res["uri"])
    assert "results.json" in manifest["files"] and "samples_fp2-1.0-0.2.1.jsonl" in manifest["files"]
    # the empty local chabsa/ folder has no objects, so it does not exist on S3 at all
    assert set(res["skipped"]) == {"broken"}
    local = _run(world, "local-for-s3")
    for key in ("harness/demo_fin/acc", "harness/fp2/acc", "ppl", "chat/adherence", "harness/avg/ci_low"):
        assert res["metrics"][key] == pytest.approx(local["metrics"][key], rel=1e-6)
    assert res["metrics"]["ppl/ci_high"] == pytest.approx(local["metrics"]["ppl/ci_high"], rel=1e-6)


def _reference_ppl(model, tok, texts: list[str], max_tokens: int, window: int) -> float:
    stream: list[int] = []
    for t in texts:
        stream += tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]
    stream = stream[:max_tokens]
    nll, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(stream), window):
            w = torch.tensor([stream[i : i + window]])
            if w.shape[1] < 2:
                continue
            loss = model(input_ids=w, labels=w).loss  # mean over the window's predicted tokens
            nll += float(loss) * (w.shape[1] - 1)
            n += w.shape[1] - 1
    return math.exp(nll / n)


def test_perplexity_matches_reference_and_training_lowers_it(world, main_run):
    tok = world["tok"]
    texts = [
        json.loads(line)["text"] for line in Path(world["heldout"]).read_text(encoding="utf-8").splitlines()
    ]
    model = _load(world)
    ref = _reference_ppl(model, tok, texts, max_tokens=700, window=512)
    assert main_run["metrics"]["ppl"] == pytest.approx(ref, rel=1e-5)
    report = json.loads((storage.local_path(main_run["uri"]) / "results.json").read_text(encoding="utf-8"))
    info = report["finmerge"]["ppl"]
    assert info["tokens"] == 700 and info["windows"] == 2 and info["predicted_tokens"] == 511 + 187

    # a few dozen steps on the held-out text itself must lower perplexity
    stream: list[int] = []
    for t in texts:
        stream += tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]
    blocks = torch.tensor([stream[i : i + 64] for i in range(0, len(stream) - 64, 64)])
    torch.manual_seed(0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _step in range(40):
        batch = blocks[torch.randint(0, len(blocks), (8,))]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_model(model, tok, world["root"] / "trained", "trained on held-out")
    trained = _run(world, "trained", model="trained", chat=False, harness_dirs=[])
    assert trained["metrics"]["ppl"] < 0.5 * main_run["metrics"]["ppl"]
    assert trained["metrics"]["ppl"] == pytest.approx(_reference_ppl(model, tok, texts, 700, 512), rel=1e-5)


def test_reply_checks():
    r = ADHERENCE_REGEX
    assert ev.reply_adheres("回答：増加しました", True, r)
    assert ev.reply_adheres("  回答：増加しました\n", True, r)  # stripped before matching
    assert not ev.reply_adheres("回答：増加しました", False, r)  # ran out of budget
    assert not ev.reply_adheres("回答：増加\n次の行", True, r)  # two lines
    assert not ev.reply_adheres("回答：増", True, r)  # too short
    assert not ev.reply_adheres("はい。回答：増加", True, r)  # must start with the prefix
    assert ev.reply_correct("回答：売上高は１２３億円", ["123億円"])  # NFKC on the reply
    assert ev.reply_correct("回答：123億円", ["１２３億円"])  # and on the answers
    assert not ev.reply_correct("回答：減少", ["増加", ""])  # an empty answer never matches
    assert ev.reply_correct("ＡＢＣ社", ["ABC"])


def test_chat_probe_end_to_end(world, main_run):
    rows = [
        json.loads(line)
        for line in (storage.local_path(main_run["uri"]) / "chat_samples.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()
    ]
    assert [r["id"] for r in rows] == [f"c{k}" for k in range(5)]
    assert all(isinstance(r["reply"], str) and r["new_tokens"] <= 12 for r in rows)
    assert main_run["metrics"]["chat/adherence"] == 0.0
    assert main_run["metrics"]["chat/answer_acc"] == pytest.approx(np.mean([r["correct"] for r in rows]))
    assert main_run["tags"] == {"chat/template": "tokenizer", "harness/best_version": "1.0-0.2.1"}


def test_chat_prompt_and_left_padding(world):
    tok = world["tok"]
    ids, template = ev.chat_prompt_ids(tok, "架空の質問")
    assert template == "tokenizer"
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # the template's BOS, not a second one
    assert tok.decode(ids).endswith("### 指示:\n架空の質問\n\n### 応答:\n")

    plain = train_tokenizer(_texts(50, 2), 300, world["root"] / "plain_tok")
    ids, template = ev.chat_prompt_ids(plain, "架空の質問")
    assert template == "none" and ids == plain.encode("架空の質問\n", add_special_tokens=False)

    model = _load(world)
    prompts = [ev.chat_prompt_ids(tok, "架空" + "会社" * k)[0] for k in range(4)]
    kw = {"max_new_tokens": 8, "eos": ev.eos_ids(model, tok), "pad_id": tok.pad_token_id, "device": "cpu"}
    batched = ev.greedy_generate(model, prompts, batch_size=4, progress=False, **kw)
    single = ev.greedy_generate(model, prompts, batch_size=1, progress=False, **kw)
    assert batched == single
    assert all(len(ids) == 8 and not ended for ids, ended in single)


def test_eos_stops_generation(world):
    tok = world["tok"]
    model = _load(world)
    prompt = ev.chat_prompt_ids(tok, "架空の質問")[0]
    kw = {"max_new_tokens": 3, "batch_size": 1, "pad_id": 0, "device": "cpu", "progress": False}
    ((free, ended),) = ev.greedy_generate(model, [prompt], eos=[], **kw)
    assert len(free) == 3 and not ended
    # declare the second greedy token an EOS: the reply stops before its first occurrence and counts as ended
    ((reply, ended),) = ev.greedy_generate(model, [prompt], eos=[free[1]], **kw)
    assert ended and reply == free[: free.index(free[1])]


def test_comparison_report(tmp_path):
    results = {
        "merged": {"harness/avg": 0.31, "harness/demo_fin/acc": 0.31, "ppl": 12.5, "chat/adherence": 0.8},
        "base": {"harness/avg": 0.25, "harness/demo_fin/acc": 0.25, "ppl": 20.0, "chat/adherence": 0.0},
        "cpt": {"harness/avg": 0.27, "harness/demo_fin/acc": 0.27, "ppl": 11.0},
    }
    rep = ev.comparison_report(results, tmp_path / "cmp")
    md = (tmp_path / "cmp" / "eval_comparison.md").read_text(encoding="utf-8")
    assert rep["markdown"] in md
    lines = rep["markdown"].strip().splitlines()
    assert lines[0] == "| model | harness/avg | harness/demo_fin/acc | chat/adherence | ppl |"
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["base", "cpt", "merged"]
    assert "| cpt | 0.2700 | 0.2700 | — | **11.00** |" in lines
    assert "| merged | **0.3100** | **0.3100** | **0.8000** | 12.50 |" in lines
    png = tmp_path / "cmp" / "eval_comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(Path(f).name for f in rep["files"]) == ["eval_comparison.md", "eval_comparison.png"]
    # no ppl at all: one panel, still fine
    ev.comparison_report({"base": {"harness/avg": 0.2}}, tmp_path / "one")
    assert (tmp_path / "one" / "eval_comparison.png").exists()


def test_comparison_report_with_intervals(tmp_path):
    results = {
        "base": {"harness/avg": 0.25, "harness/avg/ci_low": 0.2, "harness/avg/ci_high": 0.3, "ppl": 20.0},
        "merged": {"harness/avg": 0.31, "ppl": 12.5, "ppl/ci_low": 12.0, "ppl/ci_high": 13.25},
    }
    rep = ev.comparison_report(results, tmp_path / "cmp")
    lines = rep["markdown"].strip().splitlines()
    assert lines[0] == "| model | harness/avg | ppl |"  # the bounds are not columns
    assert "| base | 0.2500 [0.2000, 0.3000] | 20.00 |" in lines
    assert "| merged | **0.3100** | **12.50 [12.00, 13.25]** |" in lines
    assert (tmp_path / "cmp" / "eval_comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_evaluate_full_harness_layout_all_versions(world, tmp_path, capsys):
    """`finmerge evaluate` on the five harness layouts (synthetic), a task filter, every prompt version and
    an lm-eval style results.json path; the leaderboard figures follow the harness's rules."""
    from harness_fixtures import write_harness

    from finmerge.cli import main

    counts = write_harness(tmp_path / "datasets", seed=3, sizes={"chabsa": 24, "cpa_audit": 10})
    out = tmp_path / "res" / "results.json"
    rc = main(
        [
            "evaluate",
            "--model",
            str(world["root"] / "random"),
            "--tasks",
            f"fin-harness:{tmp_path / 'datasets'}:chabsa,cpa_audit,fp2,cma_basics",
            "--prompt-version",
            "all",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--set",
            f"storage.staging_dir={tmp_path / 'staging'}",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads(out.read_text(encoding="utf-8"))
    assert summary["results"] == str(out) and (tmp_path / "res" / "results" / "_manifest.json").exists()
    # chabsa has no 0.1.2 / 0.2.1: 7 names for it, 9 for the others; security_sales_1 was not asked for
    names = set(report["results"])
    assert len([n for n in names if n.startswith("chabsa")]) == 7 and "chabsa-1.0-0.1.2" not in names
    assert {"cpa_audit", "cpa_audit-1.0-0.6", "fp2-1.0-0.2.1", "cma_basics-1.0-0.4"} <= names
    assert not any(n.startswith("security_sales_1") for n in names) and len(names) == 7 + 3 * 9
    assert set(report["results"]["chabsa-1.0-0.3"]) >= {"f1,none", "acc,none", "f1_stderr,none"}
    assert report["results"]["chabsa-1.0-0.3"]["f1_stderr,none"] == "N/A"
    assert report["configs"]["chabsa-1.0-0.3"]["target_delimiter"] == ""
    assert report["configs"]["chabsa"]["target_delimiter"] == " "
    assert report["n-samples"]["cpa_audit"]["effective"] == counts["cpa_audit"]
    board = report["finmerge"]["leaderboard"]
    assert set(board["versions"]) == set(fin_harness.VERSIONS)
    best = board["best_version"]
    assert board["versions"][best]["avg"] == max(v["avg"] for v in board["versions"].values())
    tasks = board["versions"]["1.0-0.1.2"]["tasks"]
    # chabsa at 0.1.2 is its 0.1 prompt; the leaderboard score of a task is f1 for chabsa, else acc
    assert tasks["chabsa"] == report["results"]["chabsa-1.0-0.1"]["f1,none"]
    assert tasks["fp2"] == report["results"]["fp2-1.0-0.1.2"]["acc,none"]
    nonzero = [v for v in tasks.values() if v]
    expected = sum(nonzero) / len(nonzero) if nonzero else 0.0
    assert board["versions"]["1.0-0.1.2"]["avg"] == pytest.approx(expected)
    assert summary["best_version"] == best and summary["avg"] == pytest.approx(
        100 * board["versions"][best]["avg"], abs=0.01
    )
    # per-item choice log-likelihoods are kept, one file per scored harness task name
    samples = (tmp_path / "res" / "results" / "samples_cpa_audit-1.0-0.6.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in samples.splitlines()]
    assert len(rows) == counts["cpa_audit"] and all(len(r["ll"]) == 6 for r in rows)


def test_judged_questions_in_the_stage(world, tmp_path, monkeypatch):
    """evaluate.judge wired into the stage: judge metrics and samples, the key (from its env var) nowhere
    in the committed folder, and a missing URL is a clear error before anything is written."""
    from openai_fake import FakeOpenAI

    from finmerge.config import JudgeConfig

    key = "sk-STAGE-PLANTED-0123456789"
    monkeypatch.setenv("FINMERGE_JUDGE_API_KEY", key)
    questions = [
        {
            "question_id": k,
            "category": cat,
            "turns": ["架空の会社の売上高を説明してください。", "要点を一文で。"],
        }
        for k, cat in enumerate(["knowledge", "knowledge", "writing", "extraction"])
    ]
    qfile = _write_jsonl(tmp_path / "question.jsonl", questions)

    def judged_only(out: str, cfg: EvaluateConfig, label: str) -> dict:  # no harness, held-out text or chat
        return ev.evaluate_model(
            str(world["root"] / "random"),
            str(tmp_path / out),
            cfg,
            label=label,
            harness_dirs=[],
            heldout_uri=None,
            chat_uri=None,
            staging_dir=str(tmp_path / "staging"),
            progress=False,
        )

    def rate(body: dict) -> str:  # the fake judge rates every answer 7
        return "評価：[[7]]"

    with FakeOpenAI(rate, require_key=key) as fake:
        judge_cfg = JudgeConfig(questions=qfile, url=fake.url, model="judge-x", max_new_tokens=8)
        cfg = EvaluateConfig(max_new_tokens=8, judge=judge_cfg)
        res = judged_only("out", cfg, "judged")
        seen = [{k.lower(): v for k, v in r["headers"].items()}.get("authorization") for r in fake.requests]
    assert seen and all(h == f"Bearer {key}" for h in seen)
    rows = [
        json.loads(x)
        for x in (storage.local_path(res["uri"]) / "judge_samples.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 8
    judged = [r for r in rows if r["reason"] == "judged"]
    assert all(r["score"] == 7 for r in judged)
    m = res["metrics"]
    if judged:  # tiny random models may produce only hard zeros (empty / wrong-language answers)
        assert "judge/overall" in m and 0 <= m["judge/overall"] <= 7
    assert res["tags"]["judge/model"] == "judge-x" and res["counts"]["judge/rows"] == 8
    for path in storage.local_path(res["uri"]).rglob("*"):
        if path.is_file():
            assert key not in path.read_text(encoding="utf-8", errors="replace"), path.name

    with pytest.raises(ValueError, match="judge.url"):
        judged_only("out2", EvaluateConfig(judge=JudgeConfig(questions=qfile)), "nourl")
    assert not (tmp_path / "out2").exists()

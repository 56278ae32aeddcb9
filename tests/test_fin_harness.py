"""Prompt rendering, task loading and metrics against hand-written strings from fin-harness.md §2-§3.

Every item here is synthetic (made-up questions in the harness schema); no benchmark text is used.
"""

from __future__ import annotations

import json
import math
import re
import zipfile

import numpy as np
import pytest
from harness_fixtures import (  # tests/ is on sys.path (rootdir conftest)
    write_chabsa,
    write_cpa_xlsx,
    write_harness,
)

from finmerge.evaluate import harness as fh
from finmerge.evaluate import harness_cpa

Q = "架空の株式会社サンプルの説明として正しいものはどれか。"
C = "資料：架空の数値表"
CHOICES = ("甲案", "乙案", "丙案", "丁案")
FQ = "架空の制度に関する記述のうち、最も適切なものはどれか。"
FX = "１．記述甲\n２．記述乙\n３．記述丙\n４．記述丁"
SENTINEL = "COMMENT_SENTINEL_理由"

ALPACA = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。\n\n### 指示:\n"
LLAMA2 = (
    "<s>[INST] <<SYS>>\n"
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering something "
    "not correct. If you don't know the answer to a question, please don't share false information."
    "\n<</SYS>>\n\n\n"
)
SELECT = "与えられた選択肢の中から、最適な答えを選んでください。"
TEXTS = list(CHOICES)
LETTERS = ["A", "B", "C", "D"]

MCQ_EXPECTED = {
    # version: (full context before the move, continuations after the move)
    "default": (
        "以下の問題の適切な答えを選択肢から選んでアルファベットで答えなさい。\n\n\n"
        f"【問題】\n{Q}\n{C}\n\n【選択肢】\nA: 甲案\nB: 乙案\nC: 丙案\nD: 丁案\n\n【答え】\n",
        ["\nA", "\nB", "\nC", "\nD"],
    ),
    "1.0-0.1": (
        "[問題]に対する[答え]を[選択肢]の中から選んでください。\n\n\n"
        f"[問題]:{Q}\n{C}\n[選択肢]:[甲案, 乙案, 丙案, 丁案]\n[答え]:",
        TEXTS,
    ),
    "1.0-0.1.2": (
        "[問題]に対する[答え]を[選択肢]の中からアルファベットで選んでください。\n\n\n"
        f"[問題]:{Q}\n{C}\n[選択肢]:[A:甲案, B:乙案, C:丙案, D:丁案]\n[答え]:",
        LETTERS,
    ),
    "1.0-0.2": (
        "質問と回答の選択肢を入力として受け取り、選択肢から回答を選択してください。"
        "なお、回答は選択肢の番号(例:0)でするものとします。\n\n\n"
        f"質問:{Q}\n{C}\n選択肢:0.甲案,1.乙案,2.丙案,3.丁案\n回答:",
        ["0", "1", "2", "3"],
    ),
    "1.0-0.2.1": (
        f"{SELECT}\n\n\n質問:{Q}\n{C}\n選択肢:\n- 甲案\n- 乙案\n- 丙案\n- 丁案\n回答:",
        TEXTS,
    ),
    "1.0-0.3": (
        f"{ALPACA}{SELECT}\n\n\n### 入力:\n{Q}\n{C}\n出力は以下から選択してください：\n"
        "- 甲案\n- 乙案\n- 丙案\n- 丁案\n\n### 応答:\n",
        ["\n甲案", "\n乙案", "\n丙案", "\n丁案"],
    ),
    "1.0-0.4": (
        f"ユーザー: {SELECT}<NL>システム: 分かりました。<NL>"
        f"ユーザー: 質問：{Q}\n{C}<NL>選択肢：<NL>- 甲案<NL>- 乙案<NL>- 丙案<NL>- 丁案<NL>システム: ",
        [" 甲案", " 乙案", " 丙案", " 丁案"],
    ),
    "1.0-0.5": (
        f"ユーザー: {SELECT}\nシステム: 分かりました。\n\n"
        f"ユーザー: 質問：{Q}\n{C}\n選択肢：\n- 甲案\n- 乙案\n- 丙案\n- 丁案\nシステム: ",
        [" 甲案", " 乙案", " 丙案", " 丁案"],
    ),
    "1.0-0.6": (
        f"{LLAMA2}{SELECT}\n\n質問：{Q}\n{C}出力は以下から選択してください：\n- 甲案\n- 乙案\n- 丙案\n- 丁案 [/INST] ",
        [" 甲案", " 乙案", " 丙案", " 丁案"],
    ),
}

FP2_CHOICES = ("１", "２", "３", "４")
FP2_EXPECTED = {
    "default": (
        f"以下の問題の適切な答えを選択肢から選んで１～４の数字で答えなさい。\n\n\n【問題】\n{FQ}\n{FX}\n\n【答え】\n",
        ["\n１", "\n２", "\n３", "\n４"],
    ),
    "1.0-0.1": (
        f"[問題]に対する[答え]を[選択肢]の中から選んでください。\n\n\n[問題]:{FQ}\n{FX}\n[選択肢]:[１, ２, ３, ４]\n[答え]:",
        ["１", "２", "３", "４"],
    ),
    "1.0-0.1.2": (
        "[問題]に対する[答え]を[選択肢]の中からアルファベットで選んでください。\n\n\n"
        f"[問題]:{FQ}\n{FX}\n[選択肢]:[A:１, B:２, C:３, D:４]\n[答え]:",
        LETTERS,
    ),
    "1.0-0.2": (
        "質問と回答の選択肢を入力として受け取り、選択肢から回答を選択してください。"
        "なお、回答は選択肢の番号(例:0)でするものとします。\n\n\n"
        f"質問:{FQ}\n{FX}\n選択肢:0.１,1.２,2.３,3.４\n回答:",
        ["0", "1", "2", "3"],
    ),
    "1.0-0.2.1": (f"{SELECT}\n\n\n質問:{FQ}\n{FX}\n\n回答:", ["１", "２", "３", "４"]),
    "1.0-0.3": (
        f"{ALPACA}{SELECT}\n\n\n### 入力:\n{FQ}\n{FX}\n\n### 応答:\n",
        ["\n１", "\n２", "\n３", "\n４"],
    ),
    "1.0-0.4": (
        f"ユーザー: {SELECT}<NL>システム: 分かりました。<NL>ユーザー: {FQ}\n{FX}<NL>システム: ",
        [" １", " ２", " ３", " ４"],
    ),
    "1.0-0.5": (
        f"ユーザー: {SELECT}\nシステム: 分かりました。\n\nユーザー: {FQ}\n{FX}\nシステム: ",
        [" １", " ２", " ３", " ４"],
    ),
    "1.0-0.6": (f"{LLAMA2}{SELECT}\n\n質問：{FQ}\n{FX} [/INST] ", [" １", " ２", " ３", " ４"]),
}


def mcq_item(context: str = C) -> fh.Item:
    return fh.Item(id="s1", question=Q, context=context, choices=CHOICES, gold=2)


def fp2_item() -> fh.Item:
    return fh.Item(id="f1", question=FQ, context=FX, choices=FP2_CHOICES, gold=1)


def test_all_versions_covered():
    assert set(MCQ_EXPECTED) == set(fh.VERSIONS) == set(FP2_EXPECTED)


@pytest.mark.parametrize("version", list(MCQ_EXPECTED))
def test_mcq_layout(version):
    context, conts = MCQ_EXPECTED[version]
    prompt = fh.render(mcq_item(), "mcq", version)
    assert prompt.context == context
    assert prompt.target_delimiter == ""
    reqs = fh.requests_for(prompt)
    assert [c for _, c in reqs] == conts
    assert all(ctx == context.rstrip() for ctx, _ in reqs)
    assert all(
        ctx + cont == context + choice for (ctx, cont), choice in zip(reqs, prompt.choices, strict=True)
    )


@pytest.mark.parametrize("version", list(FP2_EXPECTED))
def test_fp2_layout(version):
    context, conts = FP2_EXPECTED[version]
    prompt = fh.render(fp2_item(), "fp2", version)
    assert prompt.context == context
    assert [c for _, c in fh.requests_for(prompt)] == conts


def test_mcq_without_context():
    item = mcq_item(context="")
    contexts = {v: fh.render(item, "mcq", v).context for v in fh.VERSIONS}
    assert f"【問題】\n{Q}\n\n【選択肢】\nA: 甲案\n" in contexts["default"]
    assert f"[問題]:{Q}\n[選択肢]:[甲案, 乙案, 丙案, 丁案]\n[答え]:" in contexts["1.0-0.1"]
    assert f"質問:{Q}\n選択肢:0.甲案," in contexts["1.0-0.2"]
    assert f"質問:{Q}\n選択肢:\n- 甲案\n" in contexts["1.0-0.2.1"]
    assert f"### 入力:\n{Q}\n出力は以下から選択してください：\n- 甲案\n" in contexts["1.0-0.3"]
    assert f"ユーザー: 質問：{Q}<NL>選択肢：<NL>- 甲案<NL>" in contexts["1.0-0.4"]
    assert f"ユーザー: 質問：{Q}\n選択肢：\n- 甲案\n" in contexts["1.0-0.5"]
    assert f"質問：{Q}出力は以下から選択してください：\n- 甲案\n" in contexts["1.0-0.6"]


def test_maru_batsu_letter_versions():
    item = fh.Item(id="m", question="架空の記述は正しいか。", context="", choices=("○", "×"), gold=0)
    p = fh.render(item, "mcq", "default")
    assert p.context.endswith("【選択肢】\nA: ○\nB: ×\n\n【答え】\n")
    assert p.choices == ("A", "B")
    assert [c for _, c in fh.requests_for(fh.render(item, "mcq", "1.0-0.5"))] == [" ○", " ×"]


def test_cpa_wording():
    p = fh.render(mcq_item(), "cpa", "default")
    assert p.context.startswith(
        "以下の問題の答えとして適切な記号の組み合わせを選択肢から選んでアルファベットで答えなさい。\n\n\n【問題】"
    )
    p = fh.render(mcq_item(), "cpa", "1.0-0.2.1")
    assert p.context.startswith(
        "与えられた答えの組み合わせの選択肢の中から、最適な選択肢を選んでください。\n\n\n質問:"
    )
    p = fh.render(mcq_item(), "cpa", "1.0-0.6")
    assert p.context.startswith(
        LLAMA2 + "与えられた答えの組み合わせの選択肢の中から、最適な選択肢を選んでください。\n\n質問："
    )
    p = fh.render(mcq_item(), "cpa", "1.0-0.1")
    assert p.context.startswith(
        "[問題]に対する[答え]をとして適切な記号の組み合わせを[選択肢]の中から選んでください。\n\n\n"
    )


def test_comment_never_in_prompt(tmp_path):
    raw = {
        "data-type": "multiple-choice-question",
        "data-name": "demo_fin",
        "data": [
            {
                "id": "x",
                "question": Q,
                "context": C,
                "choices": [{"id": i, "text": t} for i, t in enumerate(CHOICES)],
                "answer": 1,
                "comment": SENTINEL,
            }
        ],
    }
    task = fh.parse_task("demo_fin", raw)
    for layout in fh.LAYOUTS:
        for version in fh.VERSIONS:
            assert SENTINEL not in fh.render(task.items[0], layout, version).context


def test_whitespace_move_includes_newlines_and_fullwidth_space():
    assert fh.move_whitespace("abc \n\n", "X") == ("abc", " \n\nX")
    assert fh.move_whitespace("abc\u3000", "X") == ("abc", "\u3000X")
    assert fh.move_whitespace("abc", "X") == ("abc", "X")


def test_names_and_versions():
    assert fh.harness_task_name("cma_basics", "default") == "cma_basics"
    assert fh.harness_task_name("fp2", "1.0-0.2.1") == "fp2-1.0-0.2.1"
    assert fh.normalize_version("0.3") == "1.0-0.3"
    with pytest.raises(ValueError, match="unknown prompt version"):
        fh.normalize_version("9.9")
    assert fh.layout_for("fp2") == "fp2"
    assert fh.layout_for("cma_basics") == "mcq"
    assert fh.layout_for("security_sales_1") == "mcq"
    assert fh.layout_for("demo_fin") == "mcq"
    assert fh.layout_for("x", data_name="cpa_audit") == "cpa"
    assert fh.layout_for("cpa_audit") == "cpa"
    assert fh.layout_for("chabsa") == "chabsa"


def _write_task(root, name, items, data_name=None):
    (root / name).mkdir(parents=True, exist_ok=True)
    doc = {"data-type": "multiple-choice-question", "data-name": data_name or name, "data": items}
    (root / name / "data.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")


def _items(n, choices=CHOICES):
    return [
        {
            "id": f"i{k}",
            "question": Q,
            "context": "",
            "choices": [{"id": i, "text": t} for i, t in enumerate(choices)],
            "answer": k % len(choices),
            "comment": SENTINEL,
        }
        for k in range(n)
    ]


def test_discover_tasks_and_skips(tmp_path):
    root = tmp_path / "datasets"
    _write_task(root, "demo_fin", _items(3))
    _write_task(root, "fp2", _items(2, FP2_CHOICES))
    (root / "chabsa").mkdir()
    (root / "cpa").mkdir()
    (root / "cpa" / "CPA_AUDIT.xlsx").write_bytes(b"not really")
    (root / "broken").mkdir()
    (root / "broken" / "data.json").write_text("{not json", encoding="utf-8")
    _write_task(root, "badanswer", [{**_items(1)[0], "answer": 7}])
    _write_task(root, "nodata", [])
    missing = str(tmp_path / "does-not-exist")

    found = fh.discover_tasks([str(root), missing])
    assert [t.name for t in found.tasks] == ["demo_fin", "fp2"]
    assert [t.layout for t in found.tasks] == ["mcq", "fp2"]
    assert len(found.tasks[0].items) == 3 and found.tasks[0].items[1].gold == 1
    sk = found.skipped
    assert sk[missing] == "harness folder not found"
    assert sk["chabsa"].startswith("no data.json")
    assert "CPA_AUDIT.xlsx" in sk["cpa_audit"] and "not an xlsx file" in sk["cpa_audit"]
    assert sk["broken"].startswith("unreadable data.json") and "invalid JSON" in sk["broken"]
    assert "answer 7" in sk["badanswer"]
    assert "no items" in sk["nodata"]


def test_discover_single_task_folder_and_only(tmp_path):
    root = tmp_path / "datasets"
    _write_task(root, "demo_fin", _items(2))
    _write_task(root, "fp2", _items(2, FP2_CHOICES))
    found = fh.discover_tasks([str(root / "demo_fin")])
    assert [t.name for t in found.tasks] == ["demo_fin"] and not found.skipped
    found = fh.discover_tasks([str(root)], only=["fp2", "cma_basics"])
    assert [t.name for t in found.tasks] == ["fp2"]
    assert found.skipped == {"cma_basics": "task folder not found in harness_dirs"}
    found = fh.discover_tasks([str(root), str(root)])
    assert [t.name for t in found.tasks] == ["demo_fin", "fp2"]
    assert all("duplicate" in reason for reason in found.skipped.values()) and len(found.skipped) == 2


def test_discover_on_s3(s3_bucket):
    from finmerge.core import storage

    base = f"s3://{s3_bucket}/datasets"
    doc = {"data-type": "multiple-choice-question", "data-name": "demo_fin", "data": _items(2)}
    storage.write_json(f"{base}/demo_fin/data.json", doc)
    storage.write_json(f"{base}/fp2/data.json", {**doc, "data-name": "fp2"})
    storage.write_bytes(f"{base}/chabsa/README.md", b"downloaded at run time")
    missing = f"s3://{s3_bucket}/nothing-here"
    found = fh.discover_tasks([base, missing])
    assert [(t.name, t.layout, len(t.items)) for t in found.tasks] == [
        ("demo_fin", "mcq", 2),
        ("fp2", "fp2", 2),
    ]
    assert found.tasks[0].source == f"{base}/demo_fin/data.json"
    assert found.skipped[missing] == "harness folder not found"
    assert found.skipped["chabsa"].startswith("no data.json") and "README.md" in found.skipped["chabsa"]


# ---------------------------------------------------------------------------------------------------------
# chabsa prompts (§3.3): every version against hand-written strings

SENT = "当期の架空製品の売上高は前年を上回りました。"
TGT = "売上高"
ASK = "ターゲットのセンチメントをpositiveかnegativeで答えてください。"
PN = [" positive", " negative"]
CHABSA_EXPECTED = {
    "default": (
        f"以下のセンテンスにおける、{ASK}\n\n\nセンテンス: {SENT}\nターゲット: {TGT}\n回答:",
        " ",
        PN,
    ),
    "1.0-0.1": (
        "[センテンス]における、[ターゲット]のセンチメントをpositiveかnegativeで選んでください。\n\n\n"
        f"[センテンス]: {SENT}\nターゲット]: {TGT}\n[答え]:",  # sic: no "[" before ターゲット]
        " ",
        PN,
    ),
    "1.0-0.2": (
        "センテンスとターゲットを入力として受け取り、ターゲットに関するセンチメントをpositiveかnegativeから"
        f"選択してください。\n\n\nセンテンス: {SENT}\nターゲット: {TGT}\n回答:",
        " ",
        PN,
    ),
    "1.0-0.3": (
        f"{ALPACA}以下のセンテンスにおける、{ASK}\n\n\n### 入力:\nセンテンス:{SENT}\nターゲット:{TGT}\n\n### 応答:\n\n",
        "",
        ["\n\npositive", "\n\nnegative"],
    ),
    "1.0-0.4": (
        f"ユーザー: センテンスにおける、{ASK}<NL>システム: 分かりました。<NL>"
        f"センテンス: {SENT}<NL>ターゲット: {TGT}<NL>システム:",
        " ",
        PN,
    ),
    "1.0-0.5": (
        f"ユーザー: センテンスにおける、{ASK}\nシステム: 分かりました。\n\n"
        f"センテンス: {SENT}\nターゲット: {TGT}\nシステム:",
        " ",
        PN,
    ),
    "1.0-0.6": (
        f"{LLAMA2}与えられたセンテンスにおける、{ASK}\n\nセンテンス: {SENT}\nターゲット: {TGT} [/INST]",
        " ",
        PN,
    ),
}
CHABSA_EXPECTED["1.0-0.1.2"] = CHABSA_EXPECTED["1.0-0.1"]  # chabsa has no 0.1.2 / 0.2.1
CHABSA_EXPECTED["1.0-0.2.1"] = CHABSA_EXPECTED["1.0-0.2"]


def chabsa_item(gold: int = 0) -> fh.Item:
    return fh.Item(id="E1-0-0", question=SENT, context=TGT, choices=fh.CHABSA_CHOICES, gold=gold)


@pytest.mark.parametrize("version", fh.VERSIONS)
def test_chabsa_layout(version):
    context, delimiter, conts = CHABSA_EXPECTED[version]
    prompt = fh.render(chabsa_item(), "chabsa", version)
    assert prompt.context == context
    assert prompt.target_delimiter == delimiter == fh.target_delimiter("chabsa", version)
    assert prompt.choices == ("positive", "negative")
    reqs = fh.requests_for(prompt)
    assert [c for _, c in reqs] == conts  # what is scored after the whitespace move (§3.3 last table)
    assert all(ctx == context.rstrip() for ctx, _ in reqs)
    assert context.startswith(fh.description("chabsa", version))


def test_chabsa_versions_and_names():
    assert fh.effective_version("chabsa", "0.1.2") == "1.0-0.1"
    assert fh.effective_version("chabsa", "1.0-0.2.1") == "1.0-0.2"
    assert fh.effective_version("chabsa", "default") == "default"
    assert fh.effective_version("mcq", "0.1.2") == "1.0-0.1.2"
    assert fh.effective_version("cpa", "1.0-0.2.1") == "1.0-0.2.1"
    assert fh.harness_task_name("chabsa", "1.0-0.1.2") == "chabsa-1.0-0.1"
    assert fh.harness_task_name("chabsa", "0.2.1") == "chabsa-1.0-0.2"
    assert fh.harness_task_name("chabsa", "default") == "chabsa"
    assert fh.harness_task_name("chabsa", "0.6") == "chabsa-1.0-0.6"
    assert fh.harness_task_name("cpa_audit", "0.1.2") == "cpa_audit-1.0-0.1.2"
    assert fh.harness_task_name("my_sentiment", "0.1.2", "chabsa") == "my_sentiment-1.0-0.1"
    assert fh.harness_task_name("my_sentiment", "0.1.2") == "my_sentiment-1.0-0.1.2"
    assert fh.description("chabsa", "0.2.1") == fh.description("chabsa", "0.2")
    assert "chabsa" in fh.LAYOUTS
    with pytest.raises(ValueError, match="unknown layout"):
        fh.render(chabsa_item(), "nope", "default")


# ---------------------------------------------------------------------------------------------------------
# Metrics


def _labels(pos: int, neg: int, neu: int) -> list[int]:
    return [0] * pos + [1] * neg + [fh.NEUTRAL_GOLD] * neu


def test_metric_names():
    assert fh.metric_names("chabsa") == ("f1", "acc", "acc_norm")
    assert fh.leaderboard_metric("chabsa") == "f1"
    for layout in ("mcq", "cpa", "fp2"):
        assert fh.metric_names(layout) == ("acc", "acc_norm")
        assert fh.leaderboard_metric(layout) == "acc"


def test_chabsa_f1_constant_baselines():
    golds = _labels(4334, 3131, 258)  # the real label counts (§1), synthetic order
    assert fh.chabsa_f1(golds, [0] * len(golds)) == pytest.approx(0.359459, abs=5e-7)
    assert fh.chabsa_f1(golds, [1] * len(golds)) == pytest.approx(0.288465, abs=5e-7)
    # perfect on every non-neutral item: neutral errors keep it below 1
    perfect = [g if g != fh.NEUTRAL_GOLD else 0 for g in golds]
    assert 0.96 < fh.chabsa_f1(golds, perfect) < 1.0
    assert fh.chabsa_f1([], []) == 0.0
    with pytest.raises(ValueError):
        fh.chabsa_f1([0, 1], [0])


def test_chabsa_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(1, 60))
        golds = rng.choice([0, 1, fh.NEUTRAL_GOLD], size=n, p=[0.55, 0.4, 0.05]).tolist()
        preds = rng.choice([0, 1], size=n).tolist() if trial % 4 else [int(rng.integers(2))] * n
        expected = f1_score(golds, preds, average="macro", zero_division=0) * 1.5
        assert fh.chabsa_f1(golds, preds) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_leaderboard_average_and_best_version():
    assert fh.leaderboard_average({"a": 0.5, "b": 0.0, "c": 0.3}) == pytest.approx(0.4)
    assert fh.leaderboard_average({"a": 0.0}) == 0.0
    assert fh.leaderboard_average({}) == 0.0
    assert fh.leaderboard_average({"a": 0.2, "b": float("nan")}) == pytest.approx(0.2)
    assert fh.best_version({"1.0-0.2": 0.3, "default": 0.4, "1.0-0.1": 0.1}) == "default"
    assert fh.best_version({"1.0-0.6": 0.4, "1.0-0.2.1": 0.4}) == "1.0-0.2.1"  # tie: earlier version
    with pytest.raises(ValueError):
        fh.best_version({})


# ---------------------------------------------------------------------------------------------------------
# cpa_audit (xlsx)


def _cpa(tmp_path, n=20, **quirks):
    path = tmp_path / "cpa" / "CPA_AUDIT.xlsx"
    usable = write_cpa_xlsx(path, n, seed=7, **quirks)
    return path, usable


def test_cpa_loader_quirks(tmp_path):
    path, usable = _cpa(tmp_path, 20, empty_sixth=3, abnormal=2, dash_answer=1, empty_question=1)
    task = fh.load_cpa_audit(str(path))
    assert (task.name, task.layout, task.variant, task.source) == (
        "cpa_audit",
        "cpa",
        "nan-choice-kept",
        str(path),
    )
    assert len(task.items) == usable == 16 and task.skipped_rows == 4
    reasons = [n.split(": ", 1)[1] for n in task.notes]
    assert sorted(reasons) == sorted(
        ["abnormal_flg is 1", "abnormal_flg is 1", "a_no '-' is not a number", "empty question"]
    )
    assert all(re.fullmatch(r"row (R|H)\d+_\d-\d+: .+", n) for n in task.notes)
    assert len({it.id for it in task.items}) == len(task.items)
    assert all(re.fullmatch(r"(R|H)\d+_\d-\d+", it.id) for it in task.items)
    assert all(len(it.choices) == 6 and 0 <= it.gold < 6 for it in task.items)
    nan_items = [it for it in task.items if it.choices[5] == "nan"]
    assert len(nan_items) == 3 and all(it.gold != 5 for it in nan_items)
    for it in task.items:
        lines = it.context.split("\n")
        assert 4 <= len(lines) <= 6
        assert [ln[:3] for ln in lines] == [f"{k}: " for k in "アイウエオカ"[: len(lines)]]
        assert "nan" not in it.context

    it = nan_items[0]
    p01 = fh.render(it, "cpa", "1.0-0.1")
    assert p01.context.endswith(f"[選択肢]:[{', '.join(it.choices[:5])}, nan]\n[答え]:")
    assert p01.choices[5] == "nan" and [c for _, c in fh.requests_for(p01)][5] == "nan"
    p06 = fh.render(it, "cpa", "1.0-0.6")
    assert p06.context.endswith("\n- nan [/INST] ") and p06.choices[5] == "nan"
    assert "\nF: nan\n" in fh.render(it, "cpa", "default").context

    clean = fh.load_cpa_audit(str(path), keep_nan_choice=False)
    assert clean.variant == "nan-choice-dropped" and len(clean.items) == 16
    for kept, dropped in zip(task.items, clean.items, strict=True):
        assert (kept.id, kept.gold, kept.context) == (dropped.id, dropped.gold, dropped.context)
        assert dropped.choices == (kept.choices[:5] if kept.choices[5] == "nan" else kept.choices)
    assert "nan" not in fh.render(clean.items[task.items.index(it)], "cpa", "1.0-0.1").context


def _oracle_columns(path) -> dict[str, list[str]]:
    """What pandas<3's ``read_excel(index_col=0).astype(str)`` gave, from the installed pandas' parse.

    pandas 3 infers the same column types; only its astype(str) differs (it keeps NaN missing), so the
    pandas<3 strings are rebuilt here from the parsed values: numeric columns print every value, object
    and string columns print NaN as "nan".
    """
    import pandas as pd

    df = pd.read_excel(path, sheet_name="data", index_col=0)
    out = {}
    for col in df.columns:
        values = df[col].tolist()
        if df[col].dtype.kind in "fiub":
            out[str(col)] = [str(v) for v in values]
        else:
            out[str(col)] = ["nan" if pd.isna(v) else str(v) for v in values]
    return out


def _sheet(path, rows, readme=True):
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "data"
    for r in rows:
        ws.append(r)
    if readme:
        wb.create_sheet("README").append(["列", "説明"])
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


HEADER = ["key", "q_no", "question", "ア", "イ", "ウ", "エ", "オ", "カ", "a_no", "1", "2", "3", "4", "5", "6"]
HEADER += ["abnormal_flg"]
SIX = ["アイ", "アウ", "イウ", "イエ", "ウエ", "アエ"]


def test_cpa_conversion_matches_pandas(tmp_path):
    """Column typing quirks: a float a_no column ("3.0"), numeric statements, NA texts, a "1" string flag."""
    rows = [
        HEADER,
        [
            "R5_2",
            1,
            "架空の監査手続に関する記述の組み合わせはどれか。",
            "記述甲",
            "記述乙",
            100,
            "記述丁",
            None,
            None,
        ]
        + [3, *SIX, None],
        ["R5_2", 2, "NA", "記述甲", "記述乙", 250, "記述丁", None, None, 2, *SIX, None],
        [
            "R5_2",
            3,
            "架空の内部統制に関する記述の組み合わせとして正しいものを選べ。",
            "記述甲",
            "記述乙",
            None,
        ]
        + ["記述丁", "記述戊", None, None, *SIX[:5], None, "1"],
        ["H25_1", 4, "架空の監査報告書に関する記述の組み合わせはどれか。", "記述甲", "記述乙", 7.5, "記述丁"]
        + ["記述戊", "記述己", 6, *SIX[:5], None, None],
        ["H25_1", 5, "架空の品質管理に関する記述の組み合わせはどれか。", "記述甲", "記述乙", 12, "記述丁"]
        + [None, None, 1.0, *SIX, 0],
    ]
    path = _sheet(tmp_path / "CPA_AUDIT.xlsx", rows)
    sheet = fh.read_xlsx_rows(str(path), "data")
    header = [harness_cpa._header_name(v) for v in sheet[0]]
    body = [r + [""] * (len(header) - len(r)) for r in sheet[1:]]
    oracle = _oracle_columns(path)
    for name, expected in oracle.items():
        assert fh.pandas_str_column([r[header.index(name)] for r in body]) == expected, name
    assert oracle["a_no"] == ["3.0", "2.0", "nan", "6.0", "1.0"]  # float column: NaN among the numbers
    assert oracle["ウ"] == ["100.0", "250.0", "nan", "7.5", "12.0"]
    assert oracle["abnormal_flg"] == ["nan", "nan", "1.0", "nan", "0.0"]  # the text "1" is a number too

    task = fh.parse_cpa_sheet(sheet)
    assert [it.id for it in task.items] == ["R5_2-1", "H25_1-4", "H25_1-5"]
    assert [it.gold for it in task.items] == [2, 5, 0]
    assert task.items[0].context == "ア: 記述甲\nイ: 記述乙\nウ: 100.0\nエ: 記述丁"
    assert task.items[1].choices == (*SIX[:5], "nan") and task.items[1].gold == 5  # gold on the nan choice
    assert fh.parse_cpa_sheet(sheet, keep_nan_choice=False).items[1].choices == (*SIX[:5], "nan")
    assert task.notes == ["row R5_2-2: empty question", "row R5_2-3: abnormal_flg is 1"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1, 2, 3], ["1", "2", "3"]),
        ([1, "", 3], ["1.0", "nan", "3.0"]),
        ([1, "-", ""], ["1", "-", "nan"]),
        ([1, 2.5], ["1.0", "2.5"]),
        (["1", " 2 ", "3"], ["1", "2", "3"]),
        (["１", "２"], ["１", "２"]),  # full-width digits are text to pandas
        (["アイ", "", "NA", "None", "null"], ["アイ", "nan", "nan", "nan", "nan"]),
        (["", ""], ["nan", "nan"]),
        ([float("nan"), "x"], ["nan", "x"]),  # an error cell
    ],
)
def test_pandas_str_column(values, expected):
    assert fh.pandas_str_column(values) == expected


def test_excel_cell_value():
    assert fh.excel_cell_value(None) == ""
    assert fh.excel_cell_value(2.0) == 2 and isinstance(fh.excel_cell_value(2.0), int)
    assert fh.excel_cell_value(2.5) == 2.5
    assert math.isnan(fh.excel_cell_value("#REF!", "e"))
    assert fh.excel_cell_value("アイ", "s") == "アイ"


def test_cpa_bad_files(tmp_path, monkeypatch):
    bad = tmp_path / "x" / "CPA_AUDIT.xlsx"
    bad.parent.mkdir()
    bad.write_bytes(b"PK not really a zip")
    with pytest.raises(fh.TaskDataError, match=r"CPA_AUDIT\.xlsx: not an xlsx file"):
        fh.load_cpa_audit(str(bad))
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("hello.txt", "x")
    with pytest.raises(fh.TaskDataError, match="no xl/workbook.xml"):
        fh.load_cpa_audit(str(bad))

    nosheet = _sheet(tmp_path / "n" / "CPA_AUDIT.xlsx", [HEADER])
    import openpyxl

    wb = openpyxl.load_workbook(nosheet)
    wb["data"].title = "Sheet1"
    wb.save(nosheet)
    with pytest.raises(fh.TaskDataError, match=r"no sheet 'data' \(sheets: Sheet1, README\)"):
        fh.load_cpa_audit(str(nosheet))

    cols = _sheet(tmp_path / "c" / "CPA_AUDIT.xlsx", [[c for c in HEADER if c not in ("a_no", "6")]])
    with pytest.raises(fh.TaskDataError, match=r"c/CPA_AUDIT\.xlsx: missing columns: a_no, 6"):
        fh.load_cpa_audit(str(cols))
    nokey = _sheet(tmp_path / "k" / "CPA_AUDIT.xlsx", [HEADER[1:] + ["key"]])
    with pytest.raises(fh.TaskDataError, match="first column must be 'key'"):
        fh.load_cpa_audit(str(nokey))

    allbad = _sheet(tmp_path / "b" / "CPA_AUDIT.xlsx", [HEADER, ["R1_1", 1, "", *[""] * 6, "-"]])
    with pytest.raises(fh.TaskDataError, match="no usable rows") as err:
        fh.load_cpa_audit(str(allbad))
    assert err.value.notes == ["row R1_1-1: empty question"]

    good, _ = _cpa(tmp_path, 12)
    monkeypatch.setattr(harness_cpa, "MAX_XLSX_UNZIPPED", 2000)
    with pytest.raises(fh.TaskDataError, match="unpacks to .* over the 2000 byte limit"):
        fh.load_cpa_audit(str(good))
    monkeypatch.setattr(harness_cpa, "MAX_XLSX_BYTES", 1000)
    with pytest.raises(fh.TaskDataError, match="over the 1000 byte limit for a task file"):
        fh.load_cpa_audit(str(good))
    monkeypatch.undo()
    monkeypatch.setattr(harness_cpa, "MAX_SHEET_ROWS", 5)
    with pytest.raises(fh.TaskDataError, match="more than 5 rows"):
        fh.load_cpa_audit(str(good))


def test_cpa_bad_a_no_values(tmp_path):
    rows = [HEADER]
    for k, a_no in enumerate(["-", 0, 7, 2.5, "abc", 4]):
        rows.append(
            ["R3_1", k + 1, f"架空の論点{k}に関する記述の組み合わせはどれか。", "甲", "乙", "丙", "丁"]
        )
        rows[-1] += [None, None, a_no, *SIX, None]
    task = fh.load_cpa_audit(str(_sheet(tmp_path / "CPA_AUDIT.xlsx", rows)))
    assert [it.id for it in task.items] == ["R3_1-6"] and task.items[0].gold == 3
    assert task.notes == [
        "row R3_1-1: a_no '-' is not a number",
        "row R3_1-2: a_no 0 is outside 1..6",
        "row R3_1-3: a_no 7 is outside 1..6",
        "row R3_1-4: a_no '2.5' is not a number",
        "row R3_1-5: a_no 'abc' is not a number",
    ]
    assert task.skipped_rows == 5


# ---------------------------------------------------------------------------------------------------------
# chabsa (e*_ann.json)


def _chabsa_doc(doc_id="E00001"):
    return {
        "header": {
            "document_id": doc_id,
            "document_name": "架空株式会社",
            "edi_id": doc_id,
            "security_code": "9999",
            "category33": "サービス業",
            "category17": "情報通信・サービスその他",
            "scale": "3",
            "doc_text": "有価証券報告書",
        },
        "sentences": [
            {
                "sentence_id": 0,
                "sentence": "売上高は増加し、販売費は横ばいでした。",
                "opinions": [
                    {"target": "売上高", "category": "sales", "polarity": "positive", "from": 0, "to": 3},
                    {"target": "販売費", "category": "cost", "polarity": "neutral", "from": 8, "to": 11},
                ],
            },
            {"sentence_id": 1, "sentence": "特記事項はありません。", "opinions": []},
            {
                "sentence_id": 2,
                "sentence": "受注高は減少しました。",
                "opinions": [
                    {"target": "受注高", "category": "x", "polarity": "negative", "from": 0, "to": 3}
                ],
            },
        ],
    }


def test_chabsa_flattening():
    items = fh.parse_chabsa_doc(_chabsa_doc(), "e00001_ann")
    assert [(it.id, it.context, it.gold) for it in items] == [
        ("E00001-0-0", "売上高", 0),
        ("E00001-0-1", "販売費", fh.NEUTRAL_GOLD),
        ("E00001-2-0", "受注高", 1),
    ]
    assert items[0].question == "売上高は増加し、販売費は横ばいでした。"
    assert all(it.choices == ("positive", "negative") for it in items)
    doc = _chabsa_doc(doc_id="")
    assert fh.parse_chabsa_doc(doc, "e00042_ann")[0].id == "e00042_ann-0-0"  # no document_id: the file stem
    for bad, msg in [
        ([], "top level"),
        ({"header": {}, "sentences": {}}, "sentences"),
        ({"header": {}, "sentences": [{"sentence": 3}]}, "sentence 0"),
        ({"header": {}, "sentences": [{"sentence": "s", "opinions": [{"target": "t"}]}]}, "bad polarity"),
        ({"header": {}, "sentences": [{"sentence": "s", "opinions": [{"polarity": "positive"}]}]}, "target"),
    ]:
        with pytest.raises(fh.TaskDataError, match=msg):
            fh.parse_chabsa_doc(bad, "e1_ann")


def test_chabsa_loader_skips_broken_files(tmp_path):
    folder = tmp_path / "sentiment"
    total = write_chabsa(folder, 4, seed=3, neutral_share=0.1, opinions=50)
    (folder / "e99997_ann.json").write_text("{oops", encoding="utf-8")
    (folder / "e99998_ann.json").write_text(json.dumps(["not", "a", "doc"]), encoding="utf-8")
    doc = _chabsa_doc()
    doc["sentences"][2]["opinions"][0]["polarity"] = "mixed"
    (folder / "e99999_ann.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    (folder / "other.json").write_text("{oops", encoding="utf-8")  # not an annotation file: ignored

    task = fh.load_chabsa(str(folder))
    assert (task.name, task.layout, task.source) == ("chabsa", "chabsa", str(folder))
    assert len(task.items) == total == 50 and task.skipped_rows == 3
    assert sum(it.gold == fh.NEUTRAL_GOLD for it in task.items) == 5
    assert [n.split(":")[0] for n in task.notes] == [
        "file e99997_ann.json",
        "file e99998_ann.json",
        "file e99999_ann.json",
    ]
    assert "invalid JSON" in task.notes[0] and "top level" in task.notes[1] and "'mixed'" in task.notes[2]
    ids = [it.id for it in task.items]
    assert len(set(ids)) == len(ids) and ids[0] == "E00007-0-0"
    assert all(it.context in it.question for it in task.items)
    assert [it.id.split("-")[0] for it in task.items] == sorted(it.id.split("-")[0] for it in task.items)

    found = fh.discover_tasks([str(tmp_path)])
    assert [t.name for t in found.tasks] == ["chabsa"]  # any folder of e*_ann.json files is chabsa
    assert found.notes["chabsa"] == task.notes


def test_chabsa_all_files_broken(tmp_path):
    folder = tmp_path / "chabsa"
    folder.mkdir()
    (folder / "e00001_ann.json").write_text("[]", encoding="utf-8")
    found = fh.discover_tasks([str(tmp_path)])
    assert not found.tasks
    assert (
        found.skipped["chabsa"].startswith("unreadable chabsa")
        and "no opinions in 1" in found.skipped["chabsa"]
    )
    assert len(found.notes["chabsa"]) == 1


# ---------------------------------------------------------------------------------------------------------
# The full synthetic harness layout


def _check_fixture_tasks(found: fh.Discovery, counts: dict[str, int]) -> None:
    assert not found.skipped
    assert {t.name: len(t.items) for t in found.tasks} == counts
    layouts = {t.name: t.layout for t in found.tasks}
    assert layouts == {
        "chabsa": "chabsa",
        "cma_basics": "mcq",
        "cpa_audit": "cpa",
        "fp2": "fp2",
        "security_sales_1": "mcq",
    }
    tasks = {t.name: t for t in found.tasks}
    assert tasks["cpa_audit"].skipped_rows == len(found.notes["cpa_audit"]) == 3
    assert set(found.notes) == {"cpa_audit"}
    ss1 = tasks["security_sales_1"].items
    assert {len(it.choices) for it in ss1} == {2, 4} and ("○", "×") in {it.choices for it in ss1}
    assert all(
        it.choices == ("１", "２", "３", "４") and it.context.startswith("１．") for it in tasks["fp2"].items
    )


def test_fixture_harness_discovery(tmp_path):
    counts = write_harness(tmp_path / "harness", seed=5)
    found = fh.discover_tasks([str(tmp_path / "harness")])
    _check_fixture_tasks(found, counts)
    assert [t.name for t in found.tasks] == ["chabsa", "cma_basics", "cpa_audit", "fp2", "security_sales_1"]
    for task in found.tasks:
        assert all(20 <= len(it.question) <= 120 for it in task.items)  # questions and chabsa sentences
        for version in fh.VERSIONS:
            contexts = [fh.render(it, task.layout, version).context for it in task.items]
            assert len(set(contexts)) > 0.8 * len(contexts), (task.name, version)
    lengths = {len(c) for it in found.tasks[1].items for c in it.choices}
    assert len(lengths) > 5  # cma choices of varying lengths

    assert write_harness(tmp_path / "again", seed=5) == counts
    again = fh.discover_tasks([str(tmp_path / "again")])
    assert [t.items for t in again.tasks] == [t.items for t in found.tasks]  # deterministic in the seed
    write_harness(tmp_path / "other", seed=6)
    other = fh.discover_tasks([str(tmp_path / "other")])
    assert [t.items for t in other.tasks] != [t.items for t in found.tasks]


def test_fixture_harness_only_filters(tmp_path):
    root = str(tmp_path / "harness")
    counts = write_harness(root, seed=1, sizes={"cma_basics": 5, "chabsa": 20})
    assert counts["cma_basics"] == 5 and counts["chabsa"] == 20
    found = fh.discover_tasks([root], only=["cpa"])
    assert [t.name for t in found.tasks] == ["cpa_audit"] and not found.skipped
    found = fh.discover_tasks([root], only=["cpa_audit", "chabsa", "fp2"])
    assert [t.name for t in found.tasks] == ["chabsa", "cpa_audit", "fp2"] and not found.skipped
    found = fh.discover_tasks([root], only=["security_sales_1", "no_such_task"])
    assert [t.name for t in found.tasks] == ["security_sales_1"]
    assert found.skipped == {"no_such_task": "task folder not found in harness_dirs"}

    # a task folder passed directly; the nan-choice variant flag reaches the loader
    found = fh.discover_tasks([f"{root}/cpa", f"{root}/chabsa"], cpa_nan_choice=False)
    assert [(t.name, t.variant) for t in found.tasks] == [("cpa_audit", "nan-choice-dropped"), ("chabsa", "")]
    assert all(len(it.choices) <= 6 for it in found.tasks[0].items)
    assert any(len(it.choices) == 5 for it in found.tasks[0].items)

    # a cpa folder under another name, and a duplicate cpa_audit
    other = tmp_path / "more" / "audit_exam"
    other.mkdir(parents=True)
    (other / "CPA_AUDIT.xlsx").write_bytes((tmp_path / "harness" / "cpa" / "CPA_AUDIT.xlsx").read_bytes())
    found = fh.discover_tasks([str(tmp_path / "more"), root], only=["cpa_audit"])
    assert [t.source for t in found.tasks] == [str(other / "CPA_AUDIT.xlsx")]
    assert list(found.skipped) == [f"cpa_audit@{root}/cpa"]


def test_fixture_harness_on_s3(tmp_path, s3_bucket):
    from finmerge.core import storage

    local = tmp_path / "harness"
    counts = write_harness(local, seed=2)
    base = f"s3://{s3_bucket}/datasets"
    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.write_bytes(f"{base}/{path.relative_to(local).as_posix()}", path.read_bytes())
    storage.write_bytes(f"{base}/empty_task/README.md", b"nothing here")
    found = fh.discover_tasks([base])
    assert found.skipped.pop("empty_task").startswith("no data.json")
    _check_fixture_tasks(found, counts)
    sources = {t.name: t.source for t in found.tasks}
    assert sources["cpa_audit"] == f"{base}/cpa/CPA_AUDIT.xlsx"
    assert sources["chabsa"] == f"{base}/chabsa"
    assert sources["fp2"] == f"{base}/fp2/data.json"
    local_found = fh.discover_tasks([str(local)])
    assert [t.items for t in found.tasks] == [t.items for t in local_found.tasks]
    found = fh.discover_tasks([f"{base}/cpa"], only=["cpa"], cpa_nan_choice=False)
    assert [(t.name, t.variant) for t in found.tasks] == [("cpa_audit", "nan-choice-dropped")]

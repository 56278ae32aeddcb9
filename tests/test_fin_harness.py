"""Prompt rendering and task loading against hand-written strings from fin-harness.md §3.1/§3.2.

Every item here is synthetic (made-up questions in the harness schema); no benchmark text is used.
"""

from __future__ import annotations

import json

import pytest

from finmerge import fin_harness as fh

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
    assert "CPA_AUDIT.xlsx" in sk["cpa"]
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
    from finmerge import storage

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

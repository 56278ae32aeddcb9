"""Judged generation (pfmt-bench-fin-ja style) on a tiny local model against a fake OpenAI endpoint.

All questions, answers and references are synthetic. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from openai_fake import FakeOpenAI  # tests/ is on sys.path (rootdir conftest)

from finmerge.config import JudgeConfig
from finmerge.demo.chat import CHAT_TEMPLATE
from finmerge.demo.models import init_llama, train_tokenizer
from finmerge.evaluate import generate, judge
from tests.helpers import TINY_512

PLANTED = "sk-PLANTED-9f8e7d6c5b4a39281706"
TEXTS = [
    "当社の売上高は前期比で増加しました。営業利益も堅調に推移しています。",
    "架空の会社の配当は据え置きです。金利の上昇が続いています。",
    "The company reported higher revenue and kept the dividend unchanged.",
    "次の文を英語に訳してください。決算短信の要点をまとめてください。",
] * 40
SHAPE = TINY_512

# ---------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and then do not stall when the CPU is shared."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    torch.manual_seed(0)
    tok = train_tokenizer(iter(TEXTS), 400, root / "tok", chat_template=CHAT_TEMPLATE)
    plain = train_tokenizer(iter(TEXTS), 400, root / "plain")
    return SimpleNamespace(root=root, tok=tok, plain=plain, model=init_llama(SHAPE, tok, seed=0))


def _write_jsonl(path: Path, rows: list) -> str:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _q(qid: int, category: str, turns: list[str], langs: list[str] | None = None) -> dict:
    q = {"question_id": qid, "category": category, "turns": turns}
    if langs is not None:
        q["answer_lang"] = langs
    return q


def _last_answer(body: dict) -> str:
    """The answer under judgment: the last assistant block of the conversation in the user message."""
    conv = body["messages"][1]["content"].split(judge.CONV_START, 1)[1]
    return conv.rsplit("### アシスタント:\n", 1)[1].rsplit("\n\n" + judge.CONV_END, 1)[0]


def keyword_judge(body: dict) -> str:
    """Rates ``点数N`` in the judged answer as N; ``採点不能`` gets a reply without any rating."""
    answer = _last_answer(body)
    if "採点不能" in answer:
        return "講評だけを書きました。"
    score = re.search(r"点数(\d+)", answer).group(1)
    return f"講評：よくできています。点数：[[{score}]]"


def length_judge(body: dict) -> str:
    return f"講評。[[{len(_last_answer(body)) % 9 + 1}]]"


def _client(fake: FakeOpenAI, **kw) -> judge.JudgeClient:
    kw = {"timeout_s": 10, "max_tries": 3, "max_tokens": 64, "backoff_s": 0.01, **kw}
    return judge.JudgeClient(fake.url, "judge-x", kw.pop("api_key", None), **kw)


def _hand_aggregate(rows: list[dict]) -> tuple[float, dict, dict]:
    """An independent computation: drop -1, mean per category, mean of the category means, per turn."""
    cats: dict[str, list[float]] = {}
    turns: dict[str, list[float]] = {}
    for r in rows:
        if r["score"] >= 0:
            cats.setdefault(r["category"], []).append(r["score"])
            turns.setdefault(str(r["turn"]), []).append(r["score"])
    means = {c: statistics.mean(v) for c, v in cats.items()}
    return statistics.mean(means.values()), means, {t: statistics.mean(v) for t, v in turns.items()}


# ---------------------------------------------------------------------------------------------------------
# Data files


def test_load_questions_and_references(tmp_path):
    qs = [
        _q(3, "writing", ["一", "二"]),
        _q(1, "translation", ["三", "四"], ["ja", "en"]),
        _q(2, "idea", ["五"]),
    ]
    path = _write_jsonl(tmp_path / "q.jsonl", [qs[0], "", qs[1], qs[2]])
    assert judge.load_questions(path) == qs
    assert judge.load_questions(path, limit=2) == qs[:2]
    ref = {
        "question_id": 7,
        "answer_id": "x",
        "model_id": "m",
        "choices": [{"index": 0, "turns": ["r1", "r2"]}],
    }
    assert judge.load_references(_write_jsonl(tmp_path / "r.jsonl", [ref])) == {7: ["r1", "r2"]}


GOOD = json.dumps(_q(0, "writing", ["一", "二"]), ensure_ascii=False)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{oops", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"question_id": "1", "category": "math", "turns": ["a"]}', "question_id must be an integer"),
        ('{"question_id": true, "category": "math", "turns": ["a"]}', "question_id must be an integer"),
        ('{"question_id": 1, "turns": ["a"]}', "category must be"),
        ('{"question_id": 1, "category": "math", "turns": ["a", "b", "c"]}', "1 or 2 strings"),
        ('{"question_id": 1, "category": "math", "turns": ["a", " "]}', "non-empty string"),
        ('{"question_id": 1, "category": "x", "turns": ["a"], "answer_lang": ["fr"]}', "answer_lang values"),
        (
            '{"question_id": 1, "category": "x", "turns": ["a"], "answer_lang": ["ja", "en"]}',
            "one language per",
        ),
        (
            '{"question_id": 0, "category": "math", "turns": ["a"]}',
            "duplicate question_id 0 (first on line 1)",
        ),
    ],
)
def test_bad_question_line_names_file_and_line(tmp_path, line, reason):
    path = _write_jsonl(
        tmp_path / "bad.jsonl", [GOOD, "", line, GOOD.replace('"question_id": 0', '"question_id": 9')]
    )
    with pytest.raises(judge.JudgeDataError) as err:
        judge.load_questions(path, limit=1)  # the limit does not skip validation
    assert str(err.value).startswith(f"{path}: line 3: ") and reason in str(err.value)


def test_bad_reference_line(tmp_path):
    path = _write_jsonl(tmp_path / "ref.jsonl", [{"question_id": 1, "choices": []}])
    with pytest.raises(judge.JudgeDataError, match=re.escape(f"{path}: line 1: choices")):
        judge.load_references(path)


# ---------------------------------------------------------------------------------------------------------
# Pure pieces


def test_parse_rating_and_language_rules():
    assert judge.parse_rating("講評。点数：[[7]]、別の[[3]]") == 7.0
    assert judge.parse_rating("[[8.5]]") == 8.5
    assert judge.parse_rating("点数は [6] です") == 6.0  # the single-bracket fallback
    assert judge.parse_rating("[[高い]] 10点") is None

    assert judge.dominant_script("Revenue increased. 点数9") == "en"
    assert judge.dominant_script("売上高は増加した (revenue)") == "ja"
    assert judge.dominant_script("123 !?") is None
    plain = _q(0, "knowledge", ["a", "b"])
    assert judge.hard_zero_reason("  \n", plain, 1) == "empty_answer"
    assert judge.hard_zero_reason("売上高です。", plain, 1) is None
    assert judge.hard_zero_reason("Summary\n以下、日本語で説明します。", plain, 1) == "wrong_language"
    assert (
        judge.hard_zero_reason("ROE (Return on Equity) とは", plain, 1) == "wrong_language"
    )  # 20-char window
    assert judge.hard_zero_reason("ROEとは自己資本利益率", plain, 2) is None
    trans = _q(1, "translation", ["a", "b"], ["ja", "en"])
    assert judge.hard_zero_reason("The dividend is unchanged.", trans, 1) == "wrong_language"
    assert judge.hard_zero_reason("配当は据え置きです。", trans, 1) is None
    assert judge.hard_zero_reason("The dividend (配当) is unchanged.", trans, 2) is None


def test_generation_prompts(tiny):
    assert judge.one_shot_prompt(["問一", "問二"], ["答一"]) == (
        "あなたは優秀なアシスタントです。\n\n### ユーザー: 問一\n\n### アシスタント: 答一"
        "\n\n### ユーザー: 問二\n\n### アシスタント:"
    )
    ids = judge.prompt_ids(tiny.tok, "model", ["問一", "問二"], ["答一"])
    text = tiny.tok.decode(ids)
    assert ids[0] == tiny.tok.bos_token_id and ids[1] != tiny.tok.bos_token_id
    assert text.endswith("### 指示:\n問一\n\n### 応答:\n答一</s>\n\n### 指示:\n問二\n\n### 応答:\n")
    assert judge.prompt_ids(tiny.plain, "one_shot", ["問一"], []) == list(
        tiny.plain(judge.one_shot_prompt(["問一"], []))["input_ids"]
    )
    assert judge.cut_injection(" 答えです。\n### ユーザー: 次の質問") == ("答えです。", True)
    assert judge.cut_injection("答え###アシスタント") == ("答え", True)
    assert judge.cut_injection(" 答え ") == ("答え", False)


def test_aggregate_by_hand():
    rows = [
        {"category": "a", "turn": 1, "score": 10.0, "reason": "judged"},
        {"category": "a", "turn": 2, "score": -1.0, "reason": "unparsable"},
        {"category": "a", "turn": 2, "score": 4.0, "reason": "judged"},
        {"category": "b", "turn": 1, "score": 0.0, "reason": "empty_answer"},
        {"category": "b", "turn": 2, "score": 3.0, "reason": "judged"},
        {"category": "c", "turn": 1, "score": -1.0, "reason": "unparsable"},
    ]
    s = judge.aggregate(rows)
    assert s["categories"] == {"a": 7.0, "b": 1.5}  # c has no usable score
    assert s["overall"] == pytest.approx(4.25)
    assert s["turns"] == {"1": 5.0, "2": 3.5}
    assert s["counts"] == {
        "rows": 6,
        "judged": 3,
        "failed": 2,
        "hard_zero": 1,
        "empty_answer": 1,
        "wrong_language": 0,
    }
    assert judge.aggregate([])["overall"] is None


# ---------------------------------------------------------------------------------------------------------
# Generation


QUESTIONS = [
    _q(0, "writing", ["架空の会社の決算説明会の案内文を書いてください。", "それを短くしてください。"]),
    _q(1, "math", ["売上高が100億円から125億円になった。増収率は？", "翌年も同じ率なら売上高は？"]),
    _q(2, "coding", ["配当利回りを計算する関数を書いてください。", "テストも書いてください。"]),
    _q(
        3,
        "translation",
        ["次の文を英語に訳してください：売上高は増加した。", "次も英語に：配当を据え置く。"],
        ["en", "en"],
    ),
    _q(4, "roleplay", ["証券会社の営業担当として話してください。", "金利の質問に答えてください。"]),
    _q(5, "ESGs", ["架空の会社のESG方針を説明してください。", "課題を一つ挙げてください。"]),
]


def _answers(tiny, **kw):
    kw = {"template": "model", "max_new_tokens": 8, "device": "cpu", "seed": 0, "progress": False, **kw}
    return judge.generate_answers(tiny.model, kw.pop("tok", tiny.tok), QUESTIONS, **kw)


def test_generation_is_seeded_and_batch_independent(tiny):
    first = _answers(tiny)
    assert [r["question_id"] for r in first] == list(range(6))
    assert all(
        len(r["turns"]) == 2 and r["template"] == "model" and not r["template_fallback"] for r in first
    )
    assert [r["temperature"] for r in first] == [0.7, 0.0, 0.0, 0.7, 0.7, 0.7]
    assert all(n <= 8 for r in first for n in r["new_tokens"])
    assert _answers(tiny) == first
    assert _answers(tiny, batch_size=1) == first
    other = _answers(tiny, seed=1)
    for a, b in zip(first, other, strict=True):
        if a["temperature"] == 0.0:
            assert a["turns"] == b["turns"]  # greedy: the seed does not matter
    assert any(a["turns"] != b["turns"] for a, b in zip(first, other, strict=True) if a["temperature"] > 0)


def test_greedy_matches_hf_generate(tiny):
    (row,) = judge.generate_answers(
        tiny.model,
        tiny.tok,
        [QUESTIONS[1]],
        template="model",
        max_new_tokens=8,
        device="cpu",
        seed=0,
        progress=False,
    )
    ids = judge.prompt_ids(tiny.tok, "model", QUESTIONS[1]["turns"][:1], [])
    ref = tiny.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    new = ref[0, len(ids) :].tolist()
    eos = tiny.tok.eos_token_id
    new = new[: new.index(eos)] if eos in new else new
    assert row["turns"][0] == judge.cut_injection(tiny.tok.decode(new, skip_special_tokens=True))[0]


def test_no_chat_template_falls_back_to_one_shot(tiny):
    rows = _answers(tiny, tok=tiny.plain)
    assert {(r["template"], r["template_fallback"]) for r in rows} == {("one_shot", True)}
    with pytest.raises(ValueError, match="no room"):
        _answers(tiny, max_length=8)


class ScriptedLM(torch.nn.Module):
    """Emits a fixed token script after any prompt (then EOS); records every prompt it prefills."""

    def __init__(self, script: list[int], vocab: int, eos: int) -> None:
        super().__init__()
        self.script, self.vocab, self.eos = script, vocab, eos
        self.generation_config = SimpleNamespace(eos_token_id=eos)
        self.prompts: list[list[int]] = []
        self.width = 0

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True):
        if past_key_values is None:
            self.prompts += [row[m == 1].tolist() for row, m in zip(input_ids, attention_mask, strict=True)]
            self.width = attention_mask.shape[1]
        step = attention_mask.shape[1] - self.width
        tok = self.script[step] if step < len(self.script) else self.eos
        logits = torch.full((input_ids.shape[0], input_ids.shape[1], self.vocab), -1e4)
        logits[:, -1, tok] = 0.0
        return SimpleNamespace(logits=logits, past_key_values="cache")


def test_injection_cut_and_second_turn_prompt(tiny):
    tok = tiny.tok
    model = ScriptedLM(tok.encode("回答です。", add_special_tokens=False), len(tok), tok.eos_token_id)
    q = _q(9, "math", ["売上高は？", "営業利益は？"])
    kw = {"device": "cpu", "seed": 0, "progress": False}
    (row,) = judge.generate_answers(model, tok, [q], template="model", max_new_tokens=64, **kw)
    assert row["turns"] == ["回答です。", "回答です。"] and row["ended_with_eos"] == [True, True]
    assert row["injection_cut"] == [False, False] and row["new_tokens"] == [len(model.script)] * 2
    turn2 = tok.decode(model.prompts[1])
    assert turn2.endswith(
        "### 指示:\n売上高は?\n\n### 応答:\n回答です。</s>\n\n### 指示:\n営業利益は?\n\n### 応答:\n"
    )

    # the model goes on to write the user's next turn itself: cut there, and stop generating soon after
    model.script = tok.encode("回答です。\n### ユーザー: " + "次の質問" * 40, add_special_tokens=False)
    (row,) = judge.generate_answers(model, tok, [q], template="model", max_new_tokens=500, **kw)
    assert row["turns"] == ["回答です。", "回答です。"] and row["injection_cut"] == [True, True]
    seen = next(k for k in range(len(model.script)) if "### ユーザー" in tok.decode(model.script[:k]))
    checks = generate.STOP_CHECK_EVERY
    assert row["new_tokens"] == [-(-seen // checks) * checks] * 2 < [len(model.script)] * 2
    assert row["ended_with_eos"] == [False, False]
    turn2 = tok.decode(model.prompts[3])
    assert "次の質問" not in turn2 and turn2.endswith(
        "回答です。</s>\n\n### 指示:\n営業利益は?\n\n### 応答:\n"
    )

    (short,) = judge.generate_answers(
        model, tok, [q], template="one_shot", max_new_tokens=3, max_length=20, **kw
    )
    assert short["new_tokens"] == [3, 3] and short["ended_with_eos"] == [False, False]
    assert short["prompt_truncated"] == [True, True] and all(len(p) == 17 for p in model.prompts[4:])


# ---------------------------------------------------------------------------------------------------------
# Judging against the fake endpoint

JQ = [
    _q(0, "writing", ["案内文を書いてください。", "短くしてください。"]),
    _q(1, "math", ["増収率は？", "翌年の売上高は？"]),
    _q(2, "translation", ["英訳：売上高は増加した。", "英訳：配当を据え置く。"], ["en", "en"]),
    _q(3, "translation", ["和訳：Revenue rose.", "英訳：配当を据え置く。"], ["ja", "en"]),
    _q(4, "knowledge", ["ROEとは？"]),
    _q(5, "knowledge", ["PERとは？", "PBRとは？"]),
]
JA = [
    ["ご案内：点数8の案内文です。", "短縮版です。点数6"],
    ["増収率は25%です。点数4", "125億円です。点数3"],
    ["Revenue increased. 点数9", "配当を据え置きます。点数7"],  # turn 2 is Japanese: wrong language
    ["売上高は増加しました。点数5", "We keep the dividend unchanged. 採点不能"],  # turn 2: unparsable
    ["Summary\n以下、点数3"],  # English first line: wrong language
    ["株価収益率です。点数2", ""],  # turn 2 empty
]
REFS = {1: ["参照：増収率は25%。", "参照：125億円。"]}


def _answer_rows() -> list[dict]:
    return [{"question_id": q["question_id"], "turns": a} for q, a in zip(JQ, JA, strict=True)]


def test_judge_answers_scores_and_aggregates_by_hand():
    with FakeOpenAI(keyword_judge) as fake, _client(fake) as client:
        rows = judge.judge_answers(_answer_rows(), JQ, REFS, client, concurrency=3)
        bodies = fake.bodies()
    got = [(r["question_id"], r["turn"], r["score"], r["reason"]) for r in rows]
    assert got == [
        (0, 1, 8.0, "judged"),
        (0, 2, 6.0, "judged"),
        (1, 1, 4.0, "judged"),
        (1, 2, 3.0, "judged"),
        (2, 1, 9.0, "judged"),
        (2, 2, 0.0, "wrong_language"),
        (3, 1, 5.0, "judged"),
        (3, 2, -1.0, "unparsable"),
        (4, 1, 0.0, "wrong_language"),
        (5, 1, 2.0, "judged"),
        (5, 2, 0.0, "empty_answer"),
    ]
    assert [r["tries"] for r in rows if r["question_id"] == 3] == [1, 3]
    assert len(bodies) == 7 + 3  # hard zeros are never sent; the unparsable one was tried max_tries times

    s = judge.aggregate(rows)
    # writing (8+6)/2; math (4+3)/2; translation (9+0+5)/3, the -1 dropped; knowledge (0+2+0)/3
    assert s["categories"] == pytest.approx(
        {"writing": 7.0, "math": 3.5, "translation": 14 / 3, "knowledge": 2 / 3}
    )
    assert s["overall"] == pytest.approx((7.0 + 3.5 + 14 / 3 + 2 / 3) / 4)
    assert s["turns"] == pytest.approx({"1": (8 + 4 + 9 + 5 + 0 + 2) / 6, "2": (6 + 3 + 0 + 0) / 4})
    assert s["counts"] == {
        "rows": 11,
        "judged": 7,
        "failed": 1,
        "hard_zero": 3,
        "empty_answer": 1,
        "wrong_language": 2,
    }

    by_prompt = {r["judge_prompt"]: r for r in rows if r["judge_prompt"]}
    assert set(by_prompt) == {"single", "single-multi-turn", "single-math", "single-math-multi-turn"}
    sent = {b["messages"][1]["content"]: b for b in bodies}
    math1 = next(u for u in sent if "増収率は？" in u and "翌年" not in u)
    assert "参照：増収率は25%。" in math1 and "参照：125億円。" not in math1
    math2 = next(u for u in sent if "翌年の売上高は？" in u)
    for part in (
        "参照：増収率は25%。",
        "参照：125億円。",
        "増収率は？",
        "増収率は25%です。点数4",
        "125億円です。点数3",
    ):
        assert part in math2
    assert "2つ目の質問" in sent[math2]["messages"][0]["content"]
    assert "参照回答" in sent[math2]["messages"][0]["content"]
    writing2 = next(u for u in sent if "短くしてください。" in u)
    assert "案内文を書いてください。" in writing2 and "ご案内：点数8の案内文です。" in writing2
    assert judge.REF_START not in writing2
    for b in bodies:
        assert b["model"] == "judge-x" and b["max_tokens"] == 64 and "[[" in b["messages"][0]["content"]


def test_judge_prompt_layout():
    name, system, user = judge.judge_prompt(["問一", "問二"], ["答一", "答二"], 2, ["参一", "参二"])
    assert name == "single-math-multi-turn"
    assert user == (
        "［参照回答ここから］\n\n### 参照回答（1つ目の質問）:\n参一\n\n### 参照回答（2つ目の質問）:\n参二"
        "\n\n［参照回答ここまで］\n\n［会話ここから］\n\n### ユーザー:\n問一\n\n### アシスタント:\n答一"
        "\n\n### ユーザー:\n問二\n\n### アシスタント:\n答二\n\n［会話ここまで］"
    )
    name, system, user = judge.judge_prompt(["問一", "問二"], ["答一", "答二"], 1)
    assert name == "single" and "答二" not in user and "問二" not in user
    for word in ("有用性", "関連性", "正確性", "深さ", "創造性", "詳細さ", "0点", "[[点数]]", "1から10"):
        assert word in system


@pytest.mark.parametrize(
    "fake_kw",
    [
        {"fail_first": 2, "fail_status": 500},
        {"fail_first": 2, "fail_status": 429, "retry_after": "0"},
        {"disconnect_first": 2},
    ],
)
def test_transient_failures_are_retried(fake_kw):
    with FakeOpenAI(lambda body: "よい回答です。[[7]]", **fake_kw) as fake, _client(fake) as client:
        rating = client.rate("system", "user")
        statuses = [r["status"] for r in fake.requests]
    assert rating == judge.Rating(7.0, "よい回答です。[[7]]", 1)
    assert statuses[-1] == 200 and len(statuses) == 3


def test_persistent_and_client_errors_raise():
    with FakeOpenAI(fail_first=10) as fake, _client(fake, http_tries=3) as client:
        with pytest.raises(judge.JudgeError, match=r"HTTP 500 \(gave up after 3 tries\)"):
            client.rate("s", "u")
        assert len(fake.requests) == 3
    with FakeOpenAI() as fake:
        bad = judge.JudgeClient(fake.url.replace("/v1", "/v2"), "m", None, backoff_s=0.01)
        with pytest.raises(judge.JudgeError, match="HTTP 404"):
            bad.rate("s", "u")
        assert len(fake.requests) == 1  # a client error is not retried


def test_unparsable_replies_retry_with_rising_temperature():
    def warm_up(body: dict) -> str:
        return "点数をつけ忘れました" if body["temperature"] < 0.0005 else "[[6]]"

    with FakeOpenAI(warm_up) as fake, _client(fake) as client:
        assert client.rate("s", "u") == judge.Rating(6.0, "[[6]]", 2)
        assert [b["temperature"] for b in fake.bodies()] == [0.0, 0.001]
    with FakeOpenAI(lambda body: "点数なし") as fake, _client(fake) as client:
        assert client.rate("s", "u") == judge.Rating(-1.0, "点数なし", 3)
        assert [b["temperature"] for b in fake.bodies()] == pytest.approx([0.0, 0.001, 0.002])


# ---------------------------------------------------------------------------------------------------------
# End to end and secrets


def _config(tmp_path: Path, url: str, **kw) -> JudgeConfig:
    questions = _write_jsonl(tmp_path / "question.jsonl", QUESTIONS)
    refs = _write_jsonl(
        tmp_path / "reference.jsonl",
        [
            {
                "question_id": 1,
                "model_id": "ref",
                "choices": [{"index": 0, "turns": ["参照：25%", "参照：156億円"]}],
            }
        ],
    )
    base = {"questions": questions, "reference_answers": refs, "url": url, "model": "judge-x"}
    return JudgeConfig(**{**base, "max_new_tokens": 8, "judge_max_tokens": 32, "concurrency": 3, **kw})


def test_judge_model_end_to_end(tiny, tmp_path):
    with FakeOpenAI(length_judge) as fake:
        url = fake.url.replace("http://", "http://someone:pw-SECRET@")
        rows, summary = judge.judge_model(
            tiny.model, tiny.tok, _config(tmp_path, url), device="cpu", api_key=None, progress=False
        )
        bodies = fake.bodies()
    assert [(r["question_id"], r["turn"]) for r in rows] == [(q, t) for q in range(6) for t in (1, 2)]
    judged = [r for r in rows if r["reason"] == "judged"]
    assert len(judged) == len(bodies) and summary["counts"]["judged"] == len(judged)
    for r in rows:
        if r["reason"] == "judged":
            assert r["score"] == len(r["answer"]) % 9 + 1 and r["tries"] == 1
        else:
            assert r["score"] == 0.0 and r["tries"] == 0 and r["reason"] in ("empty_answer", "wrong_language")
    overall, cats, turns = _hand_aggregate(rows)
    assert summary["overall"] == pytest.approx(overall)
    assert summary["categories"] == pytest.approx(cats) and summary["turns"] == pytest.approx(turns)
    assert summary["judge_model"] == "judge-x" and summary["judge_url"] == fake.url
    assert summary["template"] == "model" and summary["questions"] == 6
    assert "pw-SECRET" not in json.dumps([rows, summary], ensure_ascii=False)
    assert all(b["max_tokens"] == 32 and b["temperature"] == 0.0 for b in bodies)
    math_turn1 = [b for b in bodies if "売上高が100億円から125億円" in b["messages"][1]["content"]]
    assert all("参照：25%" in b["messages"][1]["content"] for b in math_turn1)


def _leaks(*texts: str) -> bool:
    return any(PLANTED in t for t in texts)


def test_api_key_never_leaks(tiny, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("FINMERGE_JUDGE_API_KEY", f"  {PLANTED}\n")
    with FakeOpenAI(length_judge, require_key=PLANTED, fail_first=1) as fake:
        cfg = _config(tmp_path, fake.url, limit=3)
        key = judge.resolve_judge_key(cfg)
        assert key == PLANTED
        rows, summary = judge.judge_model(
            tiny.model, tiny.tok, cfg, device="cpu", api_key=key, progress=False
        )
        requests = list(fake.requests)
    assert requests and all(r["headers"]["authorization"] == f"Bearer {PLANTED}" for r in requests)
    assert not _leaks(json.dumps([r["body"] for r in requests], ensure_ascii=False))
    assert summary["counts"]["judged"] > 0
    client = judge.JudgeClient("http://127.0.0.1:9/v1", "m", PLANTED)
    assert "api_key=<set>" in repr(client)

    errors = []
    with FakeOpenAI(require_key="sk-some-other-key") as fake:  # 401, its body quoting our key
        with pytest.raises(judge.JudgeError, match="HTTP 401") as e401, _client(fake, api_key=PLANTED) as c:
            c.rate("s", "u")
        errors.append(e401.value)
    with FakeOpenAI(require_key="sk-some-other-key", auth_status=400) as fake:  # a body we do show, redacted
        with pytest.raises(judge.JudgeError, match=r"HTTP 400: .*Incorrect API key provided: \*\*\*") as e400:
            with _client(fake, api_key=PLANTED) as c:
                c.rate("s", "u")
        errors.append(e400.value)
    dead = FakeOpenAI().start()
    dead_url = dead.url
    dead.stop()  # nothing listens there any more
    with judge.JudgeClient(dead_url, "m", PLANTED, http_tries=2, backoff_s=0.01) as c:
        with pytest.raises(judge.JudgeError, match="ConnectError") as econn:
            c.rate("s", "u")
        errors.append(econn.value)
    client.close()

    out = capsys.readouterr()
    tracebacks = ["".join(traceback.format_exception(e)) for e in errors]
    assert not _leaks(
        json.dumps([rows, summary], ensure_ascii=False),
        repr(client),
        caplog.text,
        out.out,
        out.err,
        *tracebacks,
        *(repr(e) for e in errors),
    )
    assert "retry 1/" in caplog.text  # the log did see the failed first request


def test_resolve_judge_key(monkeypatch):
    cfg = JudgeConfig(api_key_env="FM_TEST_JUDGE_KEY")
    monkeypatch.delenv("FM_TEST_JUDGE_KEY", raising=False)
    assert judge.resolve_judge_key(cfg) is None
    monkeypatch.setenv("FM_TEST_JUDGE_KEY", "k1")
    assert judge.resolve_judge_key(cfg) == "k1"

    from prefect.blocks import system

    monkeypatch.delenv("FM_TEST_JUDGE_KEY")
    monkeypatch.setattr(
        system.Secret, "load", classmethod(lambda cls, name: SimpleNamespace(get=lambda: " k2 "))
    )
    assert judge.resolve_judge_key(cfg.model_copy(update={"api_key_block": "judge-key"})) == "k2"

    def boom(cls, name):
        raise RuntimeError(f"cannot reach the server holding {PLANTED}")

    monkeypatch.setattr(system.Secret, "load", classmethod(boom))
    with pytest.raises(judge.JudgeError, match="'judge-key'") as err:
        judge.resolve_judge_key(cfg.model_copy(update={"api_key_block": "judge-key"}))
    assert not _leaks("".join(traceback.format_exception(err.value)))

"""Judging generated answers: hard zeros (empty answer, wrong language), the judge prompts, the ratings
and their aggregation (overall = mean of the category means)."""

from __future__ import annotations

import logging
import re
import statistics
from concurrent.futures import ThreadPoolExecutor

from finmerge.evaluate.judge_client import JudgeClient
from finmerge.evaluate.judge_data import JudgeDataError

log = logging.getLogger("finmerge.evaluate.judge")

# ---------------------------------------------------------------------------------------------------------
# Hard zeros: a small script-based language detector (fastText is not available here)

_JA_CHAR = re.compile(
    r"[\u3005\u3006\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]"
)
_LATIN_CHAR = re.compile(r"[A-Za-z\u00c0-\u024f\uff21-\uff3a\uff41-\uff5a]")


def looks_japanese(text: str) -> bool:
    """Any hiragana, katakana or CJK ideograph."""
    return _JA_CHAR.search(text) is not None


def dominant_script(text: str) -> str | None:
    """``"en"`` when Latin letters outnumber Japanese characters, ``"ja"`` when there are Japanese characters
    and not fewer than Latin letters, None when the text has neither."""
    ja, latin = len(_JA_CHAR.findall(text)), len(_LATIN_CHAR.findall(text))
    if latin > ja:
        return "en"
    return "ja" if ja else None


def answer_language_ok(answer: str, question: dict, turn: int) -> tuple[bool, str | None]:
    """(language accepted, detected language) for the answer to 1-based ``turn``.

    Items with ``answer_lang`` (translation) check the whole answer's dominant script against
    ``answer_lang[turn - 1]``; every other item must look Japanese on the first line of the answer's
    first 20 characters (the stand-in for upstream's fastText check).
    """
    langs = question.get("answer_lang")
    if langs:
        got = dominant_script(answer)
        return got == langs[turn - 1], got
    head = answer.strip()[:20].split("\n")[0]
    ok = looks_japanese(head)
    return ok, "ja" if ok else dominant_script(head)


def hard_zero_reason(answer: str, question: dict, turn: int) -> str | None:
    """``"empty_answer"`` or ``"wrong_language"`` when the answer scores 0 without a judge, else None."""
    if not answer.strip():
        return "empty_answer"
    ok, _ = answer_language_ok(answer, question, turn)
    return None if ok else "wrong_language"


# ---------------------------------------------------------------------------------------------------------
# Judge prompts (our own wording; the structure follows MT-bench's single-answer grading)

CONV_START, CONV_END = "［会話ここから］", "［会話ここまで］"
REF_START, REF_END = "［参照回答ここから］", "［参照回答ここまで］"
_ROLE = "あなたは公平で中立な審査員です。"
_TASK_SINGLE = "以下の会話で、ユーザーの質問に対するAIアシスタントの回答の質を評価してください。"
_TASK_MULTI = (
    "以下はユーザーとAIアシスタントの2往復の会話です。2つ目の質問に対するアシスタントの回答の質を"
    "評価してください。1つ目のやり取りは文脈として参照するだけにしてください。"
)
_CRITERIA = "評価では、有用性、関連性、正確性、深さ、創造性、詳細さを考慮してください。"
_REFERENCE = (
    "会話の前に参照回答を示します。アシスタントの回答を参照回答と照らし合わせ、誤りがあれば具体的に"
    "指摘して正したうえで、正確性を最も重視してください。"
)
_PROCEDURE = (
    "まず短い講評を書き、できるだけ客観的に判断してください。質問に答えていない回答は0点とします。"
    "講評の後、回答を1から10の尺度で採点し、点数を必ず次の形式で出力してください：[[点数]]。"
    "例：「点数：[[5]]」"
)


def judge_system_prompt(multi_turn: bool, with_reference: bool) -> str:
    parts = [_ROLE, _TASK_MULTI if multi_turn else _TASK_SINGLE, _CRITERIA]
    if with_reference:
        parts.append(_REFERENCE)
    parts.append(_PROCEDURE)
    return "".join(parts)


def _conversation(questions: list[str], answers: list[str]) -> str:
    body = "\n\n".join(
        f"### ユーザー:\n{q}\n\n### アシスタント:\n{a}" for q, a in zip(questions, answers, strict=True)
    )
    return f"{CONV_START}\n\n{body}\n\n{CONV_END}"


def _reference_block(refs: list[str]) -> str:
    if len(refs) == 1:
        body = f"### 参照回答:\n{refs[0]}"
    else:
        body = "\n\n".join(f"### 参照回答（{k}つ目の質問）:\n{r}" for k, r in enumerate(refs, 1))
    return f"{REF_START}\n\n{body}\n\n{REF_END}"


def judge_prompt(
    questions: list[str], answers: list[str], turn: int, reference: list[str] | None = None
) -> tuple[str, str, str]:
    """(prompt name, system message, user message) for judging the answer to 1-based ``turn``.

    Turn 1 shows the first exchange (``single``); turn 2 shows both exchanges and rates the second
    (``single-multi-turn``). With a reference (math) the reference answers for the turns shown come first
    (``single-math`` / ``single-math-multi-turn``). User message layout::

        [［参照回答ここから］\\n\\n### 参照回答（1つ目の質問）:\\n{r1}\\n\\n### 参照回答（2つ目の質問）:\\n{r2}
         \\n\\n［参照回答ここまで］\\n\\n]
        ［会話ここから］\\n\\n### ユーザー:\\n{q1}\\n\\n### アシスタント:\\n{a1}
        [\\n\\n### ユーザー:\\n{q2}\\n\\n### アシスタント:\\n{a2}]\\n\\n［会話ここまで］

    (a single-turn reference block is headed ``### 参照回答:``).
    """
    multi = turn > 1
    user = _conversation(questions[:turn], answers[:turn])
    name = "single-multi-turn" if multi else "single"
    if reference is not None:
        user = f"{_reference_block(reference[:turn])}\n\n{user}"
        name = "single-math-multi-turn" if multi else "single-math"
    return name, judge_system_prompt(multi, reference is not None), user


# ---------------------------------------------------------------------------------------------------------
# Judging and aggregation


def _judge_row(ans: dict, q: dict, turn: int) -> dict:
    k = turn - 1
    row = {
        "question_id": q["question_id"],
        "category": q["category"],
        "turn": turn,
        "answer": ans["turns"][k],
        "score": None,
        "reason": None,
        "judgment": None,
        "tries": 0,
        "judge_prompt": None,
        "detected_lang": answer_language_ok(ans["turns"][k], q, turn)[1],
    }
    for key in ("template", "temperature"):
        if key in ans:
            row[key] = ans[key]
    for key in ("new_tokens", "ended_with_eos", "injection_cut", "prompt_truncated"):
        if len(ans.get(key) or []) > k:
            row[key] = ans[key][k]
    return row


def _reference_for(q: dict, references: dict[int, list[str]], warned: set[str]) -> list[str] | None:
    ref = references.get(q["question_id"])
    if ref is None:
        if q["category"] == "math" and "math" not in warned:
            warned.add("math")
            log.warning("math questions without a reference answer are judged without one")
        return None
    if len(ref) < len(q["turns"]):
        raise JudgeDataError(
            f"question {q['question_id']}: the reference answer has {len(ref)} turns, the question {len(q['turns'])}"
        )
    return ref


def judge_answers(
    answers: list[dict],
    questions: list[dict],
    references: dict[int, list[str]],
    client: JudgeClient,
    *,
    concurrency: int,
    progress: bool = False,
) -> list[dict]:
    """One row per (question, turn), in answer order: question_id, category, turn, answer, score, reason
    (``judged`` | ``unparsable`` | ``empty_answer`` | ``wrong_language``), judgment (the judge's raw reply),
    tries, judge_prompt, detected_lang, plus the generation details of that turn when present.

    Hard zeros score 0 without a request. A question with a reference answer gets the math prompts.
    An endpoint failure (after retries) aborts with :class:`JudgeError`: it must not pass for a score.
    """
    from tqdm.auto import tqdm

    by_id = {q["question_id"]: q for q in questions}
    rows: list[dict] = []
    jobs: list[tuple[dict, str, str]] = []
    warned: set[str] = set()
    for ans in answers:
        q = by_id.get(ans["question_id"])
        if q is None:
            raise JudgeDataError(f"answer for unknown question_id {ans['question_id']}")
        ref = _reference_for(q, references, warned)
        for turn in range(1, len(ans["turns"]) + 1):
            row = _judge_row(ans, q, turn)
            rows.append(row)
            zero = hard_zero_reason(row["answer"], q, turn)
            if zero is not None:
                row.update(score=0.0, reason=zero)
                continue
            name, system, user = judge_prompt(q["turns"], ans["turns"], turn, ref)
            row["judge_prompt"] = name
            jobs.append((row, system, user))
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="judge")
    try:
        futures = [(row, pool.submit(client.rate, system, user)) for row, system, user in jobs]
        for row, fut in tqdm(futures, desc="judge", unit="answer", disable=not progress, leave=False):
            rating = fut.result()
            row.update(
                score=rating.score,
                judgment=rating.judgment,
                tries=rating.tries,
                reason="judged" if rating.score >= 0 else "unparsable",
            )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return rows


def _mean(values: list[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def aggregate(rows: list[dict]) -> dict:
    """Scores of -1 dropped; per category the mean over all its turns; overall = mean of the category
    means; per-turn means (keys "1", "2"); counts (rows, judged, failed, hard_zero)."""
    kept = [r for r in rows if r["score"] is not None and r["score"] >= 0]
    by_cat: dict[str, list[float]] = {}
    for r in rows:  # first-seen category order
        by_cat.setdefault(r["category"], [])
    for r in kept:
        by_cat[r["category"]].append(float(r["score"]))
    categories = {c: _mean(v) for c, v in by_cat.items() if v}
    by_turn: dict[str, list[float]] = {}
    for r in kept:
        by_turn.setdefault(str(r["turn"]), []).append(float(r["score"]))
    hard = [r for r in rows if r.get("reason") in ("empty_answer", "wrong_language")]
    return {
        "overall": _mean(list(categories.values())),
        "categories": categories,
        "turns": {t: _mean(v) for t, v in sorted(by_turn.items())},
        "counts": {
            "rows": len(rows),
            "judged": sum(1 for r in rows if r.get("reason") == "judged"),
            "failed": sum(1 for r in rows if r["score"] is not None and r["score"] < 0),
            "hard_zero": len(hard),
            "empty_answer": sum(1 for r in hard if r["reason"] == "empty_answer"),
            "wrong_language": sum(1 for r in hard if r["reason"] == "wrong_language"),
        },
    }

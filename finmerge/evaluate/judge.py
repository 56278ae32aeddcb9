"""pfmt-bench-fin-ja style judged generation: two-turn answers from a model, rated 1-10 by an LLM judge.

Plain functions, no Prefect or MLflow (fin-harness.md §9):

- :func:`load_questions` / :func:`load_references` read ``question.jsonl`` and FastChat answer files;
- :func:`generate_answers` answers both turns (the second prompt holds turn 1 and the model's own answer);
- :class:`JudgeClient` calls an OpenAI-compatible ``POST {url}/chat/completions`` and parses ``[[rating]]``;
- :func:`judge_answers` applies the hard zeros (empty answer, wrong language) and judges the rest;
- :func:`aggregate` and :func:`judge_model` produce the summary (overall = mean of the category means).

The judge prompts are our own Japanese texts following MT-bench's structure (see :func:`judge_prompt`).

Differences from upstream, on purpose: the language check is a script-based detector, not fastText
(:func:`answer_language_ok`); the one_shot template has no example exchange (FastChat's is English and
upstream's is not ours to copy); sampling is plain temperature sampling with per-(question, turn) seeds;
the upstream ``single-math-v1`` missing-newline quirk is not reproduced; pairwise judging is not offered.

Secrets: the API key travels only in the ``Authorization: Bearer`` header. It is never put in rows, the
summary, ``repr(client)``, log lines or exception messages; error bodies are redacted, HTTP 401/403 bodies
are dropped altogether, and the URL's userinfo, query and fragment are stripped before any use.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from finmerge.config import JudgeConfig
from finmerge.core import redact, storage
from finmerge.core.secrets import SecretError, resolve_secret
from finmerge.evaluate.loglik import encode, eos_ids, model_max_length, supports_logits_to_keep

log = logging.getLogger("finmerge.evaluate.judge")

# ---------------------------------------------------------------------------------------------------------
# Errors


class JudgeDataError(ValueError):
    """A malformed question or reference file (the message names the file and the line)."""


class JudgeError(RuntimeError):
    """The judge endpoint failed (after retries where retrying makes sense). Never holds the API key."""


# ---------------------------------------------------------------------------------------------------------
# Data

LANGS = ("ja", "en")  # the languages the script-based detector can tell apart


def _jsonl_lines(uri: str) -> Iterable[tuple[int, Any]]:
    """(line number, parsed JSON) for every non-blank line; invalid JSON names the file and the line."""
    for lineno, line in enumerate(storage.read_text(uri).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise JudgeDataError(f"{uri}: line {lineno}: invalid JSON ({exc.msg})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _question_problem(rec: Any) -> str | None:
    """Why ``rec`` is not a valid question, or None."""
    if not isinstance(rec, dict):
        return "expected a JSON object"
    if not _is_int(rec.get("question_id")):
        return "question_id must be an integer"
    if not isinstance(rec.get("category"), str) or not rec["category"].strip():
        return "category must be a non-empty string"
    turns = rec.get("turns")
    if not isinstance(turns, list) or not 1 <= len(turns) <= 2:
        return "turns must be a list of 1 or 2 strings"
    if not all(isinstance(t, str) and t.strip() for t in turns):
        return "every turn must be a non-empty string"
    langs = rec.get("answer_lang")
    if langs is not None:
        if not isinstance(langs, list) or len(langs) != len(turns):
            return "answer_lang must be a list with one language per turn"
        if any(lang not in LANGS for lang in langs):
            return f"answer_lang values must be one of {list(LANGS)}"
    return None


def load_questions(uri: str, limit: int | None = None) -> list[dict]:
    """Questions ``{question_id, category, turns[, answer_lang]}`` in file order, the first ``limit`` of them.

    Every line is validated (also past ``limit``); a bad one raises :class:`JudgeDataError` naming the file,
    the line number and the reason. Question ids must be unique.
    """
    out: list[dict] = []
    seen: dict[int, int] = {}
    for lineno, rec in _jsonl_lines(uri):
        problem = _question_problem(rec)
        if problem is None and rec["question_id"] in seen:
            problem = f"duplicate question_id {rec['question_id']} (first on line {seen[rec['question_id']]})"
        if problem is not None:
            raise JudgeDataError(f"{uri}: line {lineno}: {problem}")
        seen[rec["question_id"]] = lineno
        q = {"question_id": rec["question_id"], "category": rec["category"], "turns": list(rec["turns"])}
        if rec.get("answer_lang") is not None:
            q["answer_lang"] = list(rec["answer_lang"])
        out.append(q)
    return out[:limit] if limit is not None else out


def _reference_problem(rec: Any) -> str | None:
    if not isinstance(rec, dict):
        return "expected a JSON object"
    if not _is_int(rec.get("question_id")):
        return "question_id must be an integer"
    choices = rec.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "choices must be a non-empty list of objects"
    turns = choices[0].get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        return "choices[0].turns must be a non-empty list of strings"
    return None


def load_references(uri: str) -> dict[int, list[str]]:
    """Reference answers by question id from a FastChat answer file (``choices[0].turns``)."""
    out: dict[int, list[str]] = {}
    for lineno, rec in _jsonl_lines(uri):
        problem = _reference_problem(rec)
        if problem is None and rec["question_id"] in out:
            problem = f"duplicate question_id {rec['question_id']}"
        if problem is not None:
            raise JudgeDataError(f"{uri}: line {lineno}: {problem}")
        out[rec["question_id"]] = list(rec["choices"][0]["turns"])
    return out


# ---------------------------------------------------------------------------------------------------------
# Prompts for answer generation

ONE_SHOT_SYSTEM = "あなたは優秀なアシスタントです。"
ONE_SHOT_ROLES = ("ユーザー", "アシスタント")
ONE_SHOT_SEP = "\n\n### "
# A generated role marker means the model started writing the next turn itself: the answer ends there.
INJECTION_MARKER = re.compile(r"###\s*(?:ユーザー|アシスタント)")
CATEGORY_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
}
DEFAULT_TEMPERATURE = 0.7
_MARKER_CHECK_EVERY = 32  # decode-and-search cadence for stopping a row early at an injected marker


def temperature_for(category: str) -> float:
    return CATEGORY_TEMPERATURE.get(category, DEFAULT_TEMPERATURE)


def one_shot_prompt(questions: list[str], answers: list[str]) -> str:
    """FastChat ``ADD_COLON_SINGLE`` text with our system line, ending with an open assistant turn.

    Two turns, the second being generated::

        あなたは優秀なアシスタントです。\\n\\n### ユーザー: {q1}\\n\\n### アシスタント: {a1}\\n\\n### ユーザー: {q2}\\n\\n### アシスタント:

    (FastChat's ``one_shot`` template also carries an example exchange; we have none, see the module notes.)
    """
    user, assistant = ONE_SHOT_ROLES
    parts = [ONE_SHOT_SYSTEM]
    for i, q in enumerate(questions):
        parts.append(f"{user}: {q}")
        if i < len(answers):
            parts.append(f"{assistant}: {answers[i]}")
    return ONE_SHOT_SEP.join(parts) + ONE_SHOT_SEP + f"{assistant}:"


def chat_messages(questions: list[str], answers: list[str]) -> list[dict]:
    msgs: list[dict] = []
    for i, q in enumerate(questions):
        msgs.append({"role": "user", "content": q})
        if i < len(answers):
            msgs.append({"role": "assistant", "content": answers[i]})
    return msgs


def resolve_template(tokenizer, template: str) -> str:
    """``"model"`` when asked for and the tokenizer has a chat template, else ``"one_shot"``."""
    if template not in ("model", "one_shot"):
        raise ValueError(f"unknown template {template!r} (expected 'model' or 'one_shot')")
    if template == "model" and not getattr(tokenizer, "chat_template", None):
        log.warning("the tokenizer has no chat template: answers use the one_shot template")
        return "one_shot"
    return template


def prompt_ids(tokenizer, template: str, questions: list[str], answers: list[str]) -> list[int]:
    """Token ids of the prompt for answering ``questions[-1]`` after the earlier turns and ``answers``.

    ``model``: the chat template's text (which brings its own BOS) encoded without special tokens.
    ``one_shot``: the text encoded with the tokenizer's default special tokens, as FastChat does.
    """
    if template == "model":
        text = tokenizer.apply_chat_template(
            chat_messages(questions, answers), add_generation_prompt=True, tokenize=False
        )
        return encode(tokenizer, text)
    return list(tokenizer(one_shot_prompt(questions, answers))["input_ids"])


def cut_injection(text: str) -> tuple[str, bool]:
    """(answer cut before the first generated role marker and stripped, whether a marker was found)."""
    m = INJECTION_MARKER.search(text)
    return (text[: m.start()] if m else text).strip(), m is not None


# ---------------------------------------------------------------------------------------------------------
# Generation


def row_seed(seed: int, question_id: int, turn: int) -> int:
    """A per-(question, turn) sampling seed, so answers do not depend on batching or order."""
    digest = hashlib.sha256(f"{seed}:{question_id}:{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _pick(logits, temps: list[float], gens: list, active: list[bool]) -> list[int]:
    """Greedy where the temperature is 0, else one draw from softmax(logits / T) with the row's generator."""
    import torch

    picks = logits.argmax(-1)
    for r, t in enumerate(temps):
        if active[r] and t > 0:
            probs = torch.softmax(logits[r] / t, dim=-1)
            picks[r] = torch.multinomial(probs, 1, generator=gens[r])[0]
    return picks.tolist()


def _cache_name(model) -> str:
    """The forward's KV-cache argument and output field: ``cache`` in recent transformers, else
    ``past_key_values`` (the old name still works there but warns)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _generate_batch(
    model,
    prompts: list[list[int]],
    temps: list[float],
    seeds: list[int],
    *,
    max_new_tokens: int,
    eos: set[int],
    pad_id: int,
    device,
    stop: Callable[[list[int]], bool] | None,
) -> list[tuple[list[int], bool]]:
    """KV-cached decoding of left-padded prompts. Returns (new ids before EOS, ended with EOS) per row."""
    import torch

    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at each row's first token
    gens = [
        torch.Generator(device=torch.device(device)).manual_seed(s) if t > 0 else None
        for s, t in zip(seeds, temps, strict=True)
    ]
    keep = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    cache = _cache_name(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **keep)
    new: list[list[int]] = [[] for _ in range(n)]
    ended, active = [False] * n, [True] * n
    next_pos = pos[:, -1:] + 1
    for step in range(max_new_tokens):
        picks = _pick(out.logits[:, -1, :].float(), temps, gens, active)
        for r, tok in enumerate(picks):
            if not active[r]:
                continue
            if tok in eos:
                active[r], ended[r] = False, True
            else:
                new[r].append(tok)
        if stop is not None and (step + 1) % _MARKER_CHECK_EVERY == 0:
            for r in range(n):
                if active[r] and stop(new[r]):
                    active[r] = False
        if not any(active) or step == max_new_tokens - 1:
            break
        feed = torch.tensor([[t if a else pad_id] for t, a in zip(picks, active, strict=True)], device=device)
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
        out = model(
            input_ids=feed,
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            **{cache: getattr(out, cache)},
        )
        next_pos = next_pos + 1
    return list(zip(new, ended, strict=True))


def _generate(
    model,
    prompts: list[list[int]],
    temps: list[float],
    seeds: list[int],
    *,
    batch_size: int,
    desc: str,
    progress: bool,
    **kw,
) -> list[tuple[list[int], bool]]:
    """Length-sorted (longest first) batches of :func:`_generate_batch`, results in input order."""
    from tqdm.auto import tqdm

    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    out: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress or not batches, leave=False):
        res = _generate_batch(
            model, [prompts[i] for i in batch], [temps[i] for i in batch], [seeds[i] for i in batch], **kw
        )
        for i, r in zip(batch, res, strict=True):
            out[i] = r
    return out


def generate_answers(
    model,
    tokenizer,
    questions: list[dict],
    *,
    template: str,
    max_new_tokens: int,
    device,
    seed: int,
    max_length: int | None = None,
    progress: bool = True,
    batch_size: int = 8,
) -> list[dict]:
    """Answer every turn of every question, turn by turn (turn 2's prompt holds turn 1 and our answer).

    Temperature by category (:data:`CATEGORY_TEMPERATURE`, else 0.7); 0 is greedy, otherwise plain
    temperature sampling (no top-k/top-p) with a generator seeded by :func:`row_seed`, so answers are
    reproducible and independent of batching. Generation stops at EOS or ``max_new_tokens``; the decoded
    answer is cut at a generated ``### ユーザー`` / ``### アシスタント`` marker. With ``max_length`` the prompt
    is cut from the left to ``max_length - max_new_tokens`` tokens.

    One row per question: question_id, category, turns (answers), template (the one used), template_fallback,
    temperature, and per turn: new_tokens, ended_with_eos, injection_cut, prompt_truncated.
    """
    import torch

    if max_length is not None and max_new_tokens >= max_length:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {max_length} tokens"
        )
    used = resolve_template(tokenizer, template)
    eos = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)

    def stop(ids: list[int]) -> bool:
        return INJECTION_MARKER.search(tokenizer.decode(ids, skip_special_tokens=True)) is not None

    rows = [_answer_row(q, used, used != template) for q in questions]
    n_turns = max((len(q["turns"]) for q in questions), default=0)
    with torch.inference_mode():
        for t in range(n_turns):
            todo = [i for i, q in enumerate(questions) if len(q["turns"]) > t]
            prompts = [
                prompt_ids(tokenizer, used, questions[i]["turns"][: t + 1], rows[i]["turns"]) for i in todo
            ]
            cut = [max_length is not None and len(p) > max_length - max_new_tokens for p in prompts]
            if max_length is not None:
                prompts = [p[-(max_length - max_new_tokens) :] for p in prompts]
            gens = _generate(
                model,
                prompts,
                [rows[i]["temperature"] for i in todo],
                [row_seed(seed, questions[i]["question_id"], t + 1) for i in todo],
                batch_size=max(1, batch_size),
                desc=f"answer turn {t + 1}",
                progress=progress,
                max_new_tokens=max_new_tokens,
                eos=set(eos),
                pad_id=int(pad_id),
                device=device,
                stop=stop,
            )
            for i, truncated, (ids, ended) in zip(todo, cut, gens, strict=True):
                answer, injected = cut_injection(tokenizer.decode(ids, skip_special_tokens=True))
                row = rows[i]
                row["turns"].append(answer)
                row["new_tokens"].append(len(ids))
                row["ended_with_eos"].append(ended)
                row["injection_cut"].append(injected)
                row["prompt_truncated"].append(truncated)
    return rows


def _answer_row(q: dict, template: str, fallback: bool) -> dict:
    return {
        "question_id": q["question_id"],
        "category": q["category"],
        "turns": [],
        "template": template,
        "template_fallback": fallback,
        "temperature": temperature_for(q["category"]),
        "new_tokens": [],
        "ended_with_eos": [],
        "injection_cut": [],
        "prompt_truncated": [],
    }


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
# Judge client

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
_RETRY_STATUS = {429, 500, 502, 503, 504}


def parse_rating(text: str) -> float | None:
    """The first ``[[x]]`` rating, else the first ``[x]``, else None (FastChat's two patterns)."""
    m = _RATING.search(text) or _RATING_BACKUP.search(text)
    return float(m.group(1)) if m else None


def public_url(url: str) -> str:
    """``scheme://host[:port]/path`` without userinfo, query or fragment (safe to show and to log)."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        raise JudgeError("the judge URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise JudgeError("the judge URL must be an http(s) URL with a host")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class Rating(NamedTuple):
    score: float  # -1 when no reply parsed within max_tries
    judgment: str  # the last reply
    tries: int


class JudgeClient:
    """An OpenAI-compatible chat-completions judge (thread-safe; one pooled httpx client).

    HTTP: connection errors, timeouts, 429 and 5xx are retried ``http_tries`` times with exponential
    backoff (``Retry-After`` honoured, capped at ``max_backoff_s``); any other status fails at once.
    Parsing: up to ``max_tries`` calls at temperature 0.001·i (i = 0, 1, ...) until a rating parses.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None,
        *,
        timeout_s: float = 120.0,
        max_tries: int = 5,
        max_tokens: int = 2048,
        http_tries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        import httpx

        self.url = public_url(url)
        self.model = model
        self.max_tries = max(1, max_tries)
        self.max_tokens = max_tokens
        self.http_tries = max(1, http_tries)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.__key = api_key or None
        redact.install()  # a key handed over directly (not through resolve_secret) is masked in logs too
        redact.register(self.__key)
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)

    def __repr__(self) -> str:
        key = "set" if self.__key else "none"
        return f"JudgeClient(url={self.url!r}, model={self.model!r}, api_key=<{key}>)"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        return text.replace(self.__key, "***") if self.__key else text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        return headers

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        try:
            wait = float(retry_after) if retry_after else None
        except ValueError:
            wait = None
        wait = self.backoff_s * 2**attempt if wait is None else wait
        return max(0.0, min(wait, self.max_backoff_s))

    def complete(self, messages: list[dict], *, temperature: float) -> str:
        """One chat completion's text, retrying transient failures; raises :class:`JudgeError`."""
        import httpx

        body = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": self.max_tokens,
        }
        endpoint = f"{self.url}/chat/completions"
        problem = ""
        for attempt in range(self.http_tries):
            retry_after = None
            try:
                resp = self._http.post(endpoint, json=body, headers=self._headers())
            except httpx.TransportError as exc:  # connection refused/reset, timeouts
                problem = f"{type(exc).__name__}: {self._redact(str(exc))[:200]}"
            else:
                if resp.status_code == 200:
                    text = self._reply_text(resp)
                    if text is not None:
                        return text
                    problem = "HTTP 200 with a malformed body"
                elif resp.status_code in _RETRY_STATUS:
                    problem = f"HTTP {resp.status_code}"
                    retry_after = resp.headers.get("retry-after")
                else:
                    raise JudgeError(self._status_message(resp)) from None
            if attempt + 1 < self.http_tries:
                delay = self._delay(attempt, retry_after)
                log.warning(
                    "judge %s: %s; retry %d/%d in %.1fs",
                    endpoint,
                    problem,
                    attempt + 1,
                    self.http_tries - 1,
                    delay,
                )
                time.sleep(delay)
        raise JudgeError(f"judge {endpoint}: {problem} (gave up after {self.http_tries} tries)")

    @staticmethod
    def _reply_text(resp) -> str | None:
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        return content if isinstance(content, str) else ""  # a null content is an unparsable reply

    def _status_message(self, resp) -> str:
        where = f"judge {self.url}/chat/completions: HTTP {resp.status_code}"
        if resp.status_code in (401, 403):  # the body may quote the key: keep none of it
            return f"{where}: the endpoint rejected the API key"
        return f"{where}: {self._redact(resp.text)[:300]}"

    def rate(self, system: str, user: str) -> Rating:
        """Judge until a rating parses (temperature 0.001·i on the i-th try); -1 after ``max_tries``."""
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        reply = ""
        for i in range(self.max_tries):
            reply = self.complete(messages, temperature=0.001 * i)
            score = parse_rating(reply)
            if score is not None:
                return Rating(score, reply, i + 1)
        log.warning("judge reply unparsable after %d tries: scored -1", self.max_tries)
        return Rating(-1.0, reply, self.max_tries)


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


# ---------------------------------------------------------------------------------------------------------
# Entry points


def resolve_judge_key(cfg: JudgeConfig) -> str | None:
    """The key from ``$cfg.api_key_env``, else the Prefect Secret block ``cfg.api_key_block``, else None."""
    try:
        return resolve_secret(cfg.api_key_env, cfg.api_key_block)
    except SecretError as exc:
        raise JudgeError(str(exc)) from None


def judge_model(
    model,
    tokenizer,
    cfg: JudgeConfig,
    *,
    device,
    api_key: str | None,
    progress: bool = True,
    max_length: int | None = None,
) -> tuple[list[dict], dict]:
    """Generate answers to ``cfg.questions``, judge them at ``cfg.url`` and aggregate: (rows, summary).

    The summary holds overall, categories, turns, counts, judge_model, judge_url (credential-free),
    template (used), template_requested, questions, seed and max_new_tokens. ``max_length`` defaults to
    the model's context length (prompts are cut from the left to fit ``cfg.max_new_tokens`` after them).
    """
    if not cfg.questions:
        raise JudgeDataError("judge.questions is not set")
    if not cfg.url:
        raise JudgeError("judge.url is not set")
    questions = load_questions(cfg.questions, cfg.limit)
    references = load_references(cfg.reference_answers) if cfg.reference_answers else {}
    answers = generate_answers(
        model,
        tokenizer,
        questions,
        template=cfg.template,
        max_new_tokens=cfg.max_new_tokens,
        device=device,
        seed=cfg.seed,
        max_length=max_length or model_max_length(model, tokenizer),
        progress=progress,
    )
    with JudgeClient(
        cfg.url,
        cfg.model,
        api_key,
        timeout_s=cfg.timeout_s,
        max_tries=cfg.max_tries,
        max_tokens=cfg.judge_max_tokens,
    ) as client:
        rows = judge_answers(
            answers, questions, references, client, concurrency=cfg.concurrency, progress=progress
        )
        judge_url = client.url
    used = answers[0]["template"] if answers else resolve_template(tokenizer, cfg.template)
    summary = {
        **aggregate(rows),
        "judge_model": cfg.model,
        "judge_url": judge_url,
        "template": used,
        "template_requested": cfg.template,
        "questions": len(questions),
        "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens,
    }
    return rows, summary

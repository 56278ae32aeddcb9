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

Where the parts live: :mod:`~finmerge.evaluate.judge_data` (question and reference files),
:mod:`~finmerge.evaluate.judge_generation` (the answers), :mod:`~finmerge.evaluate.judge_client` (the HTTP
judge), :mod:`~finmerge.evaluate.judge_scoring` (hard zeros, judge prompts, ratings, aggregation). This
module holds the entry points and re-exports their public names.
"""

from __future__ import annotations

from finmerge.config import JudgeConfig
from finmerge.core.secrets import SecretError, resolve_secret
from finmerge.evaluate.judge_client import JudgeClient, JudgeError, Rating, parse_rating, public_url
from finmerge.evaluate.judge_data import LANGS, JudgeDataError, load_questions, load_references
from finmerge.evaluate.judge_generation import (
    CATEGORY_TEMPERATURE,
    DEFAULT_TEMPERATURE,
    INJECTION_MARKER,
    ONE_SHOT_ROLES,
    ONE_SHOT_SEP,
    ONE_SHOT_SYSTEM,
    chat_messages,
    cut_injection,
    generate_answers,
    one_shot_prompt,
    prompt_ids,
    resolve_template,
    row_seed,
    temperature_for,
)
from finmerge.evaluate.judge_scoring import (
    CONV_END,
    CONV_START,
    REF_END,
    REF_START,
    aggregate,
    answer_language_ok,
    dominant_script,
    hard_zero_reason,
    judge_answers,
    judge_prompt,
    judge_system_prompt,
    looks_japanese,
)
from finmerge.evaluate.loglik import model_max_length

__all__ = [
    "CATEGORY_TEMPERATURE",
    "CONV_END",
    "CONV_START",
    "DEFAULT_TEMPERATURE",
    "INJECTION_MARKER",
    "LANGS",
    "ONE_SHOT_ROLES",
    "ONE_SHOT_SEP",
    "ONE_SHOT_SYSTEM",
    "REF_END",
    "REF_START",
    "JudgeClient",
    "JudgeDataError",
    "JudgeError",
    "Rating",
    "aggregate",
    "answer_language_ok",
    "chat_messages",
    "cut_injection",
    "dominant_script",
    "generate_answers",
    "hard_zero_reason",
    "judge_answers",
    "judge_model",
    "judge_prompt",
    "judge_system_prompt",
    "load_questions",
    "load_references",
    "looks_japanese",
    "one_shot_prompt",
    "parse_rating",
    "prompt_ids",
    "public_url",
    "resolve_judge_key",
    "resolve_template",
    "row_seed",
    "temperature_for",
]


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

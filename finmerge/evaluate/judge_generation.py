"""Judge answer generation: both turns of every question (turn 2's prompt holds turn 1 and the model's answer).

The answers come from :func:`finmerge.evaluate.generate.generate`, the loop the chat probe uses too.
"""

from __future__ import annotations

import hashlib
import logging
import re

from finmerge.evaluate.generate import generate, pad_id_for
from finmerge.evaluate.loglik import encode, eos_ids

log = logging.getLogger("finmerge.evaluate.judge")

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


def row_seed(seed: int, question_id: int, turn: int) -> int:
    """A per-(question, turn) sampling seed, so answers do not depend on batching or order."""
    digest = hashlib.sha256(f"{seed}:{question_id}:{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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
    pad_id = pad_id_for(tokenizer, eos)

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
            gens = generate(
                model,
                prompts,
                temps=[rows[i]["temperature"] for i in todo],
                seeds=[row_seed(seed, questions[i]["question_id"], t + 1) for i in todo],
                batch_size=batch_size,
                desc=f"answer turn {t + 1}",
                progress=progress,
                max_new_tokens=max_new_tokens,
                eos=eos,
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

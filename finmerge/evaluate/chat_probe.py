"""Chat probe: greedy replies to short questions, checked for format adherence and the expected answer."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import torch

from finmerge.config import EvaluateConfig
from finmerge.evaluate.generate import generate, pad_id_for
from finmerge.evaluate.loglik import encode, eos_ids


def reply_adheres(reply: str, ended_with_eos: bool, regex: str) -> bool:
    """A reply adheres when generation stopped at EOS within budget and the stripped text fully matches."""
    return bool(ended_with_eos) and re.fullmatch(regex, reply.strip()) is not None


def reply_correct(reply: str, answers: list[str]) -> bool:
    """Any accepted answer (NFKC-normalised too) occurs in the NFKC-normalised reply."""
    text = unicodedata.normalize("NFKC", reply)
    return any(a and unicodedata.normalize("NFKC", a) in text for a in answers)


def chat_prompt_ids(tokenizer, question: str) -> tuple[list[int], str]:
    """The tokenizer's chat template with a generation prompt, or ``question + "\\n"`` when it has none."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        return encode(tokenizer, text), "tokenizer"
    return encode(tokenizer, question + "\n"), "none"


@torch.inference_mode()
def greedy_generate(
    model, prompts: list[list[int]], *, max_new_tokens: int, max_length: int | None = None, **kw
) -> list[tuple[list[int], bool]]:
    """Greedy continuations: :func:`~finmerge.evaluate.generate.generate` (``batch_size``, ``eos``, ``pad_id``,
    ``device``, ``progress`` go there) after cutting each prompt from the left to leave ``max_new_tokens``
    within ``max_length``. Returns (reply ids before EOS, ended with EOS) per prompt."""
    limit = (max_length or 10**9) - max_new_tokens
    prompts = [p[-limit:] if limit > 0 else p for p in prompts]
    return generate(model, prompts, max_new_tokens=max_new_tokens, **kw)


def chat_probe(
    model,
    tokenizer,
    questions: list[dict],
    cfg: EvaluateConfig,
    *,
    device,
    max_length: int | None = None,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Greedy replies (``cfg.max_new_tokens``, batches of ``cfg.batch_size``) checked against
    ``cfg.adherence_regex`` and each question's accepted answers: (rows, summary)."""
    max_new_tokens, regex = cfg.max_new_tokens, cfg.adherence_regex
    prompts, templates = [], set()
    for q in questions:
        ids, template = chat_prompt_ids(tokenizer, str(q["question"]))
        prompts.append(ids)
        templates.add(template)
    eos = eos_ids(model, tokenizer)
    pad_id = pad_id_for(tokenizer, eos)
    gens = greedy_generate(
        model, prompts, max_new_tokens=max_new_tokens, max_length=max_length, batch_size=cfg.batch_size,
        eos=eos, pad_id=pad_id, device=device, progress=progress,
    )  # fmt: skip
    rows = []
    for q, p, (reply_ids, ended) in zip(questions, prompts, gens, strict=True):
        reply = tokenizer.decode(reply_ids, skip_special_tokens=True).strip()
        answers = q.get("answers") or []
        answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
        rows.append(
            {
                "id": q.get("id"),
                "reply": reply,
                "ended_with_eos": ended,
                "new_tokens": len(reply_ids) + int(ended),
                "prompt_tokens": len(p),
                "adheres": reply_adheres(reply, ended, regex),
                "correct": reply_correct(reply, answers),
                "answers": answers,
            }
        )
    n = len(rows)
    summary = {
        "n": n,
        "adherence": float(np.mean([r["adheres"] for r in rows])) if n else float("nan"),
        "answer_acc": float(np.mean([r["correct"] for r in rows])) if n else float("nan"),
        "ended_with_eos": float(np.mean([r["ended_with_eos"] for r in rows])) if n else float("nan"),
        "template": "none" if "none" in templates else "tokenizer",
        "max_new_tokens": max_new_tokens,
        "regex": regex,
    }
    return rows, summary

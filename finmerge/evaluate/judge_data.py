"""Judge inputs: pfmt-bench ``question.jsonl`` questions and FastChat reference answer files, validated."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from finmerge.core import storage


class JudgeDataError(ValueError):
    """A malformed question or reference file (the message names the file and the line)."""


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


def _valid_records(
    uri: str, problem_of: Callable[[Any], str | None], *, name_first_line: bool
) -> Iterator[dict]:
    """Every record of ``uri`` in file order; the first one with a problem or a repeated question id raises
    :class:`JudgeDataError` naming the file, the line and the reason (``name_first_line``: and where the id
    was first seen)."""
    first: dict[int, int] = {}
    for lineno, rec in _jsonl_lines(uri):
        problem = problem_of(rec)
        if problem is None and rec["question_id"] in first:
            problem = f"duplicate question_id {rec['question_id']}"
            if name_first_line:
                problem += f" (first on line {first[rec['question_id']]})"
        if problem is not None:
            raise JudgeDataError(f"{uri}: line {lineno}: {problem}")
        first[rec["question_id"]] = lineno
        yield rec


def load_questions(uri: str, limit: int | None = None) -> list[dict]:
    """Questions ``{question_id, category, turns[, answer_lang]}`` in file order, the first ``limit`` of them.

    Every line is validated (also past ``limit``); a bad one raises :class:`JudgeDataError` naming the file,
    the line number and the reason. Question ids must be unique.
    """
    out: list[dict] = []
    for rec in _valid_records(uri, _question_problem, name_first_line=True):
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
    records = _valid_records(uri, _reference_problem, name_first_line=False)
    return {rec["question_id"]: list(rec["choices"][0]["turns"]) for rec in records}

"""Harness tasks as data: items, tasks and prompts, the harness JSON layout (``data.json``) and chABSA's
``e*_ann.json`` annotation files (CPA_AUDIT.xlsx: :mod:`finmerge.evaluate.harness_cpa`)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from finmerge.core import storage

VERSIONS = (
    "default",
    "1.0-0.1",
    "1.0-0.1.2",
    "1.0-0.2",
    "1.0-0.2.1",
    "1.0-0.3",
    "1.0-0.4",
    "1.0-0.5",
    "1.0-0.6",
)
# mcq: cma_basics / security_sales_1 / demo_fin; cpa: cpa_audit wording; chabsa: sentiment of a target
LAYOUTS = ("mcq", "cpa", "fp2", "chabsa")
# chabsa has no 0.1.2 / 0.2.1 tasks: the leaderboard uses its 0.1 / 0.2 results for those versions


@dataclass(frozen=True)
class Item:
    id: str
    question: str  # chabsa: the sentence
    context: str  # chabsa: the target
    choices: tuple[str, ...]
    gold: int  # 0-based; NEUTRAL_GOLD for a neutral chabsa opinion (always scored wrong)


@dataclass
class Task:
    name: str  # bare harness task name, e.g. "cma_basics", "cpa_audit", "chabsa"
    layout: str  # one of LAYOUTS
    items: list[Item]
    source: str = ""  # URI of data.json / CPA_AUDIT.xlsx / the chabsa folder
    skipped_rows: int = 0  # cpa: sheet rows not used; chabsa: files skipped
    variant: str = ""  # a deviation from the harness's data, e.g. "nan-choice-dropped"
    notes: list[str] = field(default_factory=list)  # one line per skipped row / file


@dataclass(frozen=True)
class Prompt:
    context: str  # description + doc_to_text, before the whitespace move
    choices: tuple[str, ...]  # doc_to_choice: the scored strings, without the delimiter
    target_delimiter: str = ""


@dataclass
class Discovery:
    tasks: list[Task] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # task (or folder URI) -> reason
    notes: dict[str, list[str]] = field(default_factory=dict)  # task -> skipped rows / files, one line each


class TaskDataError(ValueError):
    def __init__(self, message: str, notes: Iterable[str] = ()):
        super().__init__(message)
        self.notes = list(notes)  # per-row / per-file problems seen before the task was given up


def layout_for(task_name: str, data_name: str | None = None) -> str:
    names = [n.lower() for n in (data_name, task_name) if n]
    for prefix in ("fp2", "cpa", "chabsa"):  # cpa covers "cpa_audit"
        if any(n.startswith(prefix) for n in names):
            return prefix
    return "mcq"


# ---------------------------------------------------------------------------------------------------------
# Harness JSON layout (data.json)


def _text(value, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TaskDataError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def parse_task(name: str, doc, source: str = "") -> Task:
    """Validate one harness data.json document; any problem raises :class:`TaskDataError`."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise TaskDataError('top level must be an object with a "data" list')
    data_type = doc.get("data-type")
    if data_type not in (None, "multiple-choice-question"):
        raise TaskDataError(f"data-type {data_type!r} is not multiple-choice-question")
    items = []
    for n, raw in enumerate(doc["data"]):
        where = f"item {n}"
        if not isinstance(raw, dict):
            raise TaskDataError(f"{where}: not an object")
        choices_raw = raw.get("choices")
        if not isinstance(choices_raw, list) or len(choices_raw) < 2:
            raise TaskDataError(f"{where}: needs a choices list with at least 2 entries")
        choices = tuple(
            _text(c.get("text") if isinstance(c, dict) else c, f"{where} choice {k}")
            for k, c in enumerate(choices_raw)
        )
        answer = raw.get("answer")
        if isinstance(answer, str) and answer.strip().lstrip("-").isdigit():
            answer = int(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise TaskDataError(
                f"{where}: answer {answer!r} is not a 0-based index into {len(choices)} choices"
            )
        question = _text(raw.get("question"), f"{where} question")
        if not question:
            raise TaskDataError(f"{where}: empty question")
        items.append(
            Item(
                id=str(raw.get("id", n)),
                question=question,
                context=_text(raw.get("context"), f"{where} context"),
                choices=choices,
                gold=answer,
            )
        )
    if not items:
        raise TaskDataError("no items")
    layout = layout_for(name, doc.get("data-name"))
    if layout == "chabsa":  # a data.json is multiple choice whatever its name says
        layout = "mcq"
    return Task(name=name, layout=layout, items=items, source=source)


# ---------------------------------------------------------------------------------------------------------
# chabsa (e*_ann.json)

CHABSA_GLOB = "e*_ann.json"
CHABSA_CHOICES = ("positive", "negative")
NEUTRAL_GOLD = -100  # "neutral" is not a choice: the harness's gold for it, never predicted
_POLARITIES = {"positive": 0, "negative": 1, "neutral": NEUTRAL_GOLD}


def is_chabsa_file(name: str) -> bool:
    return fnmatchcase(name, CHABSA_GLOB)


def parse_chabsa_doc(doc, stem: str) -> list[Item]:
    """One opinion -> one item (question = sentence, context = target); a schema problem raises."""
    if not isinstance(doc, dict) or not isinstance(doc.get("header"), dict):
        raise TaskDataError('top level must be an object with a "header" object')
    if not isinstance(doc.get("sentences"), list):
        raise TaskDataError('"sentences" must be a list')
    doc_id = doc["header"].get("document_id") or stem
    items = []
    for n, sent in enumerate(doc["sentences"]):
        if not isinstance(sent, dict) or not isinstance(sent.get("sentence"), str):
            raise TaskDataError(f'sentence {n}: needs a "sentence" string')
        opinions = sent.get("opinions") or []
        if not isinstance(opinions, list):
            raise TaskDataError(f'sentence {n}: "opinions" must be a list')
        sid = sent.get("sentence_id", n)
        for k, op in enumerate(opinions):
            if not isinstance(op, dict) or not isinstance(op.get("target"), str):
                raise TaskDataError(f'sentence {sid} opinion {k}: needs a "target" string')
            polarity = op.get("polarity")
            if polarity not in _POLARITIES:
                raise TaskDataError(f"sentence {sid} opinion {k}: bad polarity value {polarity!r}")
            items.append(
                Item(
                    f"{doc_id}-{sid}-{k}",
                    sent["sentence"],
                    op["target"],
                    CHABSA_CHOICES,
                    _POLARITIES[polarity],
                )
            )
    return items


def load_chabsa(folder: str, *, files: Sequence[str] | None = None, name: str = "chabsa") -> Task:
    """chabsa from the ``e*_ann.json`` files of a folder (sorted, for stable ids); a bad file is skipped."""
    if files is None:
        files = _files_in(folder)
    files = sorted(f for f in files if is_chabsa_file(f))
    items: list[Item] = []
    notes: list[str] = []
    for fname in files:
        try:
            doc = storage.read_json(storage.join(folder, fname))
            items.extend(parse_chabsa_doc(doc, fname.removesuffix(".json")))
        except (storage.StorageError, TaskDataError, UnicodeDecodeError, OSError) as exc:
            notes.append(f"file {fname}: {exc}")
    if not items:
        raise TaskDataError(f"{folder}: no opinions in {len(files)} {CHABSA_GLOB} files", notes)
    return Task(name, "chabsa", items, folder, skipped_rows=len(notes), notes=notes)


def _files_in(uri: str) -> list[str]:
    try:
        fs, root = storage.filesystem(uri)
        return sorted(posixpath.basename(str(p).rstrip("/")) for p in fs.ls(root, detail=False))
    except Exception:
        return []

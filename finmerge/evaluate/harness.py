"""japanese-lm-fin-harness compatible task loading, prompt rendering and metrics (no model code here).

The harness scores every task as 0-shot log-likelihood multiple choice. Three kinds of *task folder*
are recognised (/work/shared/reference/fin-harness.md §1.1):

- ``data.json`` in the harness JSON layout (cma_basics / fp2 / security_sales_1; finmerge's demo task
  ``demo_fin`` uses the cma_basics layout), named after its folder::

    {"data-type": "multiple-choice-question", "data-name": <task>,
     "data": [{"id", "question", "context", "choices": [{"id", "text"}], "answer": <0-based>, "comment"}]}

- ``CPA_AUDIT.xlsx`` (task ``cpa_audit``), read the way the harness's ``read_excel(...).astype(str)``
  did under pandas<3, quirks included (an empty 6th choice is the literal choice ``"nan"``);
- ``e*_ann.json`` chABSA annotation files (task ``chabsa``), one item per opinion.

Prompts follow fin-harness.md §3.1 (cma-style layout, with cpa_audit's wording as a variant), §3.2 (fp2)
and §3.3 (chabsa) for all nine prompt versions. Context = description + doc_to_text; the scored
continuation is ``target_delimiter + choice`` (``" "`` for chabsa except 0.3, ``""`` elsewhere), and the
context's trailing whitespace is moved to the continuation by :func:`requests_for` (§4 step 2).
The ``comment`` field (rationale / answer) is never read into a prompt.

This module finds the task folders (:func:`discover_tasks`) and re-exports the harness API, which lives in
:mod:`~finmerge.evaluate.harness_tasks` (data model, data.json, chabsa), :mod:`~finmerge.evaluate.harness_cpa`
(CPA_AUDIT.xlsx), :mod:`~finmerge.evaluate.harness_prompts` (rendering) and
:mod:`~finmerge.evaluate.harness_metrics` (metrics, leaderboard).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from finmerge.core import storage
from finmerge.evaluate.harness_cpa import (
    CPA_CHOICE_COLUMNS,
    CPA_FILE,
    CPA_SHEET,
    CPA_STATEMENTS,
    MAX_SHEET_COLUMNS,
    MAX_SHEET_ROWS,
    MAX_XLSX_BYTES,
    MAX_XLSX_UNZIPPED,
    NAN,
    excel_cell_value,
    load_cpa_audit,
    pandas_str_column,
    parse_cpa_sheet,
    read_xlsx_rows,
)
from finmerge.evaluate.harness_metrics import (
    best_version,
    chabsa_f1,
    leaderboard_average,
    leaderboard_metric,
    metric_names,
)
from finmerge.evaluate.harness_prompts import (
    ALPACA,
    NL,
    description,
    effective_version,
    harness_task_name,
    move_whitespace,
    normalize_version,
    render,
    requests_for,
    target_delimiter,
)
from finmerge.evaluate.harness_tasks import (
    CHABSA_CHOICES,
    CHABSA_GLOB,
    LAYOUTS,
    NEUTRAL_GOLD,
    VERSIONS,
    Discovery,
    Item,
    Prompt,
    Task,
    TaskDataError,
    is_chabsa_file,
    layout_for,
    load_chabsa,
    parse_chabsa_doc,
    parse_task,
)

__all__ = [
    "ALPACA",
    "CHABSA_CHOICES",
    "CHABSA_GLOB",
    "CPA_CHOICE_COLUMNS",
    "CPA_FILE",
    "CPA_SHEET",
    "CPA_STATEMENTS",
    "LAYOUTS",
    "MAX_SHEET_COLUMNS",
    "MAX_SHEET_ROWS",
    "MAX_XLSX_BYTES",
    "MAX_XLSX_UNZIPPED",
    "NAN",
    "NEUTRAL_GOLD",
    "NL",
    "VERSIONS",
    "Discovery",
    "Item",
    "Prompt",
    "Task",
    "TaskDataError",
    "best_version",
    "chabsa_f1",
    "description",
    "discover_tasks",
    "effective_version",
    "excel_cell_value",
    "harness_task_name",
    "is_chabsa_file",
    "layout_for",
    "leaderboard_average",
    "leaderboard_metric",
    "load_chabsa",
    "load_cpa_audit",
    "metric_names",
    "move_whitespace",
    "normalize_version",
    "pandas_str_column",
    "parse_chabsa_doc",
    "parse_cpa_sheet",
    "parse_task",
    "read_xlsx_rows",
    "render",
    "requests_for",
    "target_delimiter",
]


def _ls(uri: str) -> tuple[list[str], list[str]]:
    """(sub-folder names, file names) directly under a folder, hidden / private names left out."""
    fs, root = storage.filesystem(uri)
    dirs, files = [], []
    for entry in fs.ls(root, detail=True):
        base = posixpath.basename(str(entry["name"]).rstrip("/"))
        if base and not base.startswith((".", "_")):
            (dirs if entry.get("type") == "directory" else files).append(base)
    return sorted(dirs), sorted(files)


def _task_kind(files: Sequence[str]) -> str | None:
    if "data.json" in files:
        return "json"
    if CPA_FILE in files:
        return "cpa"
    if any(is_chabsa_file(f) for f in files):
        return "chabsa"
    return None


_KIND_NAMES = {"cpa": "cpa_audit", "chabsa": "chabsa"}  # the harness's names, whatever the folder is called


def _load_task(kind: str, name: str, tdir: str, files: list[str], cpa_nan_choice: bool) -> Task:
    if kind == "json":
        uri = storage.join(tdir, "data.json")
        return parse_task(name, storage.read_json(uri), source=uri)
    if kind == "cpa":
        return load_cpa_audit(storage.join(tdir, CPA_FILE), keep_nan_choice=cpa_nan_choice, name=name)
    return load_chabsa(tdir, files=files, name=name)


_UNREADABLE = {"json": "unreadable data.json", "cpa": f"unreadable {CPA_FILE}", "chabsa": "unreadable chabsa"}


def discover_tasks(
    harness_dirs: list[str], only: list[str] | None = None, *, cpa_nan_choice: bool = True
) -> Discovery:
    """Load every task folder under each folder; a problem skips the task with a reason.

    A task folder holds ``data.json`` (task named after the folder), ``CPA_AUDIT.xlsx`` (``cpa_audit``)
    or ``e*_ann.json`` files (``chabsa``); a harness folder that is itself a task folder is one task.
    ``only`` restricts to these task names (the folder name ``cpa`` also selects cpa_audit); a requested
    task found nowhere is reported as skipped. ``cpa_nan_choice=False`` drops cpa_audit's empty "nan"
    choices (not the leaderboard's data). Rows / files skipped inside a loaded task go to ``notes``.
    """
    out = Discovery()
    seen: set[str] = set()
    covered: set[str] = set()  # names in `only` that some folder answered (loaded or skipped)
    for hdir in harness_dirs:
        hdir = str(hdir).rstrip("/")
        try:
            if not storage.exists(hdir):
                out.skipped[hdir] = "harness folder not found"
                continue
            subdirs, files = _ls(hdir)
            if _task_kind(files):
                candidates = [(posixpath.basename(hdir), hdir, files)]
            else:
                candidates = [(d, storage.join(hdir, d), None) for d in subdirs]
        except Exception as exc:  # unreachable bucket, permissions, not a folder ...
            out.skipped[hdir] = f"cannot list harness folder: {type(exc).__name__}: {exc}"
            continue
        for folder, tdir, files in candidates:
            try:
                files = files if files is not None else _ls(tdir)[1]
            except Exception as exc:
                files = []
                out.notes.setdefault(folder, []).append(f"cannot list {tdir}: {type(exc).__name__}: {exc}")
            kind = _task_kind(files)
            name = _KIND_NAMES.get(kind, folder)
            if only is not None and folder not in only and name not in only:
                continue
            covered.update((folder, name))
            if name in seen:
                out.skipped[f"{name}@{tdir}"] = "duplicate task name (already loaded from an earlier folder)"
                continue
            if kind is None:
                others = ", ".join(files[:5]) or "empty folder"
                out.skipped[name] = f"no data.json, {CPA_FILE} or {CHABSA_GLOB} in task folder ({others})"
                continue
            try:
                task = _load_task(kind, name, tdir, files, cpa_nan_choice)
            except (storage.StorageError, TaskDataError, UnicodeDecodeError, OSError) as exc:
                out.skipped[name] = f"{_UNREADABLE[kind]}: {exc}"
                if getattr(exc, "notes", None):
                    out.notes[name] = list(exc.notes)
                continue
            seen.add(name)
            out.tasks.append(task)
            if task.notes:
                out.notes[name] = list(task.notes)
    for name in only or []:
        if name not in covered and name not in out.skipped:
            out.skipped[name] = "task folder not found in harness_dirs"
    return out

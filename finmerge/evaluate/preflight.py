"""Before the model loads: the device to use, the harness tasks found, and every input checked to exist."""

from __future__ import annotations

import torch

from finmerge.config import EvaluateConfig
from finmerge.core import storage
from finmerge.evaluate import harness as fin_harness
from finmerge.evaluate.mc_eval import split_task_spec


def resolve_device(device: str | None) -> torch.device:
    """``device`` checked (a clear message for a typo or a missing GPU); by default cuda if available."""
    if device:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or mps") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class NothingToEvaluate(ValueError):
    """An evaluation asked for data that is not there: a user mistake, reported before the model loads."""


def preflight(
    harness_dirs: list[str],
    only: list[str] | None,
    heldout_uri: str | None,
    chat_uri: str | None,
    cfg: EvaluateConfig,
    general_uri: str | None = None,
) -> fin_harness.Discovery:
    """Discover the harness tasks and check every input exists before the model is loaded: a harness
    folder that is missing or holds no task, a task asked for by name that no folder has, a missing
    held-out, chat or general-question file, or nothing at all to evaluate is an error naming what and
    where."""
    found = discover(list(harness_dirs), only, cfg.cpa_nan_choice)
    problems = []
    for spec in harness_dirs:
        folder, picked = split_task_spec(str(spec))
        folder = folder.rstrip("/")
        if found.skipped.get(folder, "").startswith(("harness folder not found", "cannot list")):
            problems.append(f"harness folder {folder}: {found.skipped[folder]}")
        elif picked is None and only is None and not any(t.source.startswith(folder) for t in found.tasks):
            why = "; ".join(f"{k}: {v}" for k, v in found.skipped.items()) or "it is empty"
            problems.append(f"harness folder {folder} holds no task ({why})")
    wanted = [t for spec in harness_dirs for t in (split_task_spec(str(spec))[1] or [])] + list(only or [])
    loaded = {t.name for t in found.tasks}
    aliases = {"cpa": "cpa_audit"}  # the folder name cpa selects the task cpa_audit
    missing = [t for t in dict.fromkeys(wanted) if aliases.get(t, t) not in loaded]
    for name in missing:
        why = found.skipped.get(name, "task folder not found in harness_dirs")
        problems.append(f"task {name!r}: {why}")
    files = (("held-out text", heldout_uri), ("chat questions", chat_uri), ("general questions", general_uri))
    for what, uri in files:
        if uri and not storage.exists(uri):
            problems.append(f"{what} {uri}: not found")
    if not problems and not (found.tasks or heldout_uri or chat_uri or general_uri or cfg.judge.questions):
        problems.append("nothing to evaluate: no harness task, no held-out text, no chat questions, no judge")
    if problems:
        raise NothingToEvaluate("evaluate: " + "; ".join(problems))
    return found


def discover(harness_dirs: list[str], only: list[str] | None, cpa_nan_choice: bool) -> fin_harness.Discovery:
    """Tasks from every ``DATA[:tasks]`` spec; a task name found twice keeps its first folder."""
    found = fin_harness.Discovery()
    names: set[str] = set()
    for spec in harness_dirs:
        folder, picked = split_task_spec(str(spec))
        if only is not None:
            picked = [t for t in (picked or only) if t in only]
        part = fin_harness.discover_tasks([folder], only=picked, cpa_nan_choice=cpa_nan_choice)
        for task in part.tasks:
            if task.name in names:
                found.skipped[f"{task.name}@{folder}"] = "duplicate task name (loaded from an earlier folder)"
                continue
            names.add(task.name)
            found.tasks.append(task)
        found.skipped.update({k: v for k, v in part.skipped.items() if k not in names})
        found.notes.update(part.notes)
    return found

"""The coefficient sweep: merge every candidate, evaluate it on the validation data, choose one.

Composition only, over either runner (the pipeline's Prefect one maps the candidates onto task runs; the
CLI's local one runs them in turn): each candidate's merge and evaluation is an ordinary declared stage, so
it is cached on its own key and tracked as its own MLflow run, and α = β = 1 shares the pipeline's merge
folder. With ``merge.sweep.shared_pass`` the candidates' merges are first made together, in one read of the
inputs, into the very folders their MERGE calls plan, which then are cache hits. Nothing here reads test data: the evaluations get ``validation`` inputs only, and the choice
(``finmerge/sweep``) reads only those evaluations.
"""

from __future__ import annotations

from finmerge.config import ConfigError, PipelineConfig
from finmerge.core import storage
from finmerge.runner import stage as stages
from finmerge.sweep.candidates import Candidate, candidates
from tasks.evaluate import EVALUATE
from tasks.merge import MERGE, MERGE_PASS
from tasks.sweep import SWEEP

DATA_KEYS = ("harness", "heldout", "chat", "general")


class NoValidationData(ConfigError):
    """A sweep without validation data would choose coefficients on test items."""


def demo_split(world_uri: str, split: str) -> dict:
    """The demo world's evaluation inputs of one split (``validation`` or ``test``)."""
    e = storage.join(world_uri, "eval", split)
    return {
        "harness": [storage.join(e, "harness")],
        "heldout": storage.join(e, "heldout.jsonl"),
        "chat": storage.join(e, "chat_finance.jsonl"),
        "general": storage.join(e, "chat_general.jsonl"),
    }


def validation_data(cfg: PipelineConfig) -> dict:
    """The sweep's evaluation inputs from ``merge.sweep`` (a user's own validation split)."""
    s = cfg.merge.sweep
    data = {"harness": list(s.harness_data), "heldout": s.heldout, "chat": s.chat_questions,
            "general": s.general_questions}  # fmt: skip
    if not any(data.values()):
        raise NoValidationData(
            "merge.sweep needs validation data (merge.sweep.harness_data, .heldout, .chat_questions or "
            ".general_questions): coefficients are never chosen on the test data"
        )
    return data


def with_candidate(cfg: PipelineConfig, c: Candidate) -> PipelineConfig:
    return cfg.model_copy(update={"merge": c.merge_section(cfg.merge)})


def run_sweep(runner, cfg: PipelineConfig, triplet: dict, validation: dict) -> dict:
    """Every candidate of ``merge.sweep`` merged from ``triplet`` and evaluated on ``validation``; returns the
    sweep stage's result (``chosen``: candidate, merge and evaluation of the winner) plus ``candidates``."""
    cands = candidates(cfg.merge)
    par = cfg.merge.sweep.max_parallel
    if cfg.merge.sweep.shared_pass:
        merge_in_one_pass(runner, cfg, triplet, cands)
    merges = runner.run_many(
        MERGE,
        [
            {"inputs": triplet, "cfg": with_candidate(cfg, c), "label": f"sweep-merge-{c.label}"}
            for c in cands
        ],
        max_parallel=par,
    )
    data = {k: validation.get(k) for k in DATA_KEYS}
    evals = runner.run_many(
        EVALUATE,
        [
            {"inputs": {"model": m["uri"], **data}, "label": f"sweep-evaluate-{c.label}",
             "options": {"label": f"sweep-{c.label}"}}
            for c, m in zip(cands, merges, strict=True)
        ],
        max_parallel=par,
    )  # fmt: skip
    entries = [
        {
            "candidate": c.as_dict(),
            "merge": m["uri"],
            "evaluation": e["uri"],
            "evaluation_digest": e["digest"],
        }
        for c, m, e in zip(cands, merges, evals, strict=True)
    ]
    report = runner.run(SWEEP, {"evaluations": entries})
    return {**report, "candidates": entries}


def merge_in_one_pass(runner, cfg: PipelineConfig, triplet: dict, cands: list[Candidate]) -> dict | None:
    """The candidates whose merge folder is not complete yet, merged in one read of the inputs (the
    ``merge-pass`` stage writes each to the folder MERGE plans for it); the mapped MERGE calls then find
    every folder complete. Fewer than two missing: nothing to share."""
    planned = [stages.plan(MERGE, with_candidate(cfg, c), triplet, runner.ctx) for c in cands]
    todo = [p for p in planned if stages.cached(p) is None]
    if len(todo) < 2:
        return None
    outputs = [{"uri": p.out_uri, "merge": p.call.section.model_dump(mode="json")} for p in todo]
    return runner.run(MERGE_PASS, {**triplet, "outputs": outputs}, label="sweep-merge-pass")


def publish_sweep(sweep: dict, parent=None) -> None:
    """The sweep's table and Pareto plot: a Prefect Markdown artifact (inside a flow run) and, given the
    pipeline's MLflow run, its artifacts under ``sweep/``."""
    import base64
    import tempfile
    from pathlib import Path

    png = storage.read_bytes(storage.join(sweep["uri"], "pareto.png"))
    if parent is not None:
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("pareto.png", "sweep.md", "sweep.json"):
                local = Path(tmp) / name
                local.write_bytes(
                    png if name == "pareto.png" else storage.read_bytes(storage.join(sweep["uri"], name))
                )
                parent.client.log_artifact(parent.run_id, str(local), "sweep")
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    c = sweep["chosen"]["candidate"]
    image = base64.b64encode(png).decode()
    create_markdown_artifact(
        key="finmerge-sweep",
        description="merge coefficient sweep (validation split)",
        markdown=f"# Merge coefficient sweep\n\nChosen **{c['label']}**: {sweep['reason']}.\n\n"
        f"{sweep['markdown']}\n\n![Pareto plot](data:image/png;base64,{image})\n\n"
        f"Folder: `{sweep['uri']}`\n",
    )

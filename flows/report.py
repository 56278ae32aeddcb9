"""What a pipeline run shows: the comparison table, the Markdown summary (a Prefect artifact and an MLflow
artifact) and the parent run's metrics."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from finmerge.config import PipelineConfig, config_hash
from finmerge.evaluate.run import comparison_report

MODELS = ("base", "instruct", "cpt", "merged")
TABLE_METRICS = [
    ("ppl", "finance ppl ↓"),
    ("harness/avg", "harness acc"),
    ("chat/adherence", "chat format"),
    ("chat/answer_acc", "chat answers"),
]


def format_table(evals: dict[str, dict], cos: float | None) -> str:
    header = "| model | " + " | ".join(title for _, title in TABLE_METRICS) + " |"
    lines = [header, "|---" * (len(TABLE_METRICS) + 1) + "|"]
    for label in MODELS:
        if label not in evals:
            continue
        m = evals[label].get("metrics", {})
        cells = [f"{m[k]:.3f}" if isinstance(m.get(k), int | float) else "–" for k, _ in TABLE_METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if cos is not None:
        lines.append(f"\ncos(τ_inst, τ_fin) = {cos:+.4f} (global, all tensors)")
    return "\n".join(lines)


def summary_markdown(s: dict) -> str:
    reg = s["registered"]["merged"]
    stages = ", ".join(f"{k}: {v}" for k, v in s["stages"].items())
    return (
        f"# finmerge pipeline ({s['config_hash']})\n\n{s['table']}\n\n"
        f"- merged model: `{reg['name']}` version {reg['version']} aliases {', '.join(reg['aliases']) or '–'}"
        f" → `models:/{reg['name']}@{'champion' if 'champion' in reg['aliases'] else reg['version']}`\n"
        f"- promotion: {s['promotion']['decision']} (champion v{s['promotion']['champion']})\n"
        f"- cpt model: `{s['registered']['cpt']['name']}` version {s['registered']['cpt']['version']}\n"
        f"- folders: " + ", ".join(f"{k} `{v}`" for k, v in s["models"].items()) + "\n"
        f"- MLflow: `{s['tracking_uri']}` run `{s['mlflow_run_id']}`\n- stages: {stages}\n"
        f"- wall time: {s['seconds']} s\n"
    )


def publish_summary(
    parent, runner, cfg: PipelineConfig, models, evals, vec, registered, promotion, t0
) -> dict:
    """Log the comparison to the pipeline's MLflow run and Prefect; return the summary dict."""
    cos = vec["metrics"].get("analyze/cos_global") if vec else None
    with tempfile.TemporaryDirectory() as tmp:
        report = comparison_report({k: v["metrics"] for k, v in evals.items()}, Path(tmp))
        for f in report["files"]:
            parent.client.log_artifact(parent.run_id, str(Path(tmp) / Path(f).name), "report")
    for label, ev in evals.items():
        parent.metrics({f"{label}.{k}": v for k, v in ev["metrics"].items()})
    if cos is not None:
        parent.metrics({"cos_tau_inst_tau_fin": cos})
    seconds = time.perf_counter() - t0
    parent.metrics({"pipeline_seconds": seconds})
    summary = {
        "config_hash": config_hash(cfg),
        "seconds": round(seconds, 1),
        "stages": runner.states,
        "table": format_table(evals, cos),
        "cos": cos,
        "tracking_uri": runner.ctx.tracking_uri,
        "mlflow_run_id": parent.run_id,
        "models": models,
        "registered": registered,
        "promotion": {k: v for k, v in promotion.items() if k != "report"},
        "evaluations": {k: v["metrics"] for k, v in evals.items()},
        "vectors": vec["uri"] if vec else None,
    }
    markdown = summary_markdown(summary)
    parent.text(markdown, "summary.md")
    create_markdown_artifact(
        markdown=markdown, key="finmerge-summary", description="finmerge pipeline summary"
    )
    return summary

"""What a pipeline run shows: the comparison table (every score with its confidence interval), whether the
method's claim holds in this run, the Markdown summary (a Prefect artifact and an MLflow artifact) and the
parent run's metrics."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from finmerge.config import PipelineConfig, config_hash
from finmerge.evaluate.run import comparison_report

MODELS = ("base", "instruct", "cpt", "merged", "swept")
TABLE_METRICS = [
    ("ppl", "finance ppl ↓"),
    ("harness/avg", "finance MC acc"),
    ("chat/adherence", "chat format"),
    ("chat/answer_acc", "finance chat answers"),
    ("general/answer_acc", "general chat answers"),
]
# The claim (merged = base + τ_inst + τ_fin keeps both the domain gain and instruction following), as checked
# on one run's numbers by method_claim.
PPL_FACTOR = 1.5  # the merged model's perplexity may be at most this multiple of the cpt model's
MIN_FORMAT = 0.95  # chat format adherence that counts as following instructions outright


def _metrics(ev: dict) -> dict:
    """An evaluate result's metrics (``{"metrics": {...}}``), or the metrics themselves."""
    return ev.get("metrics", ev) if isinstance(ev, dict) else {}


def _number(x) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def _fmt(name: str, x: float) -> str:
    """Perplexity ≥ 10 with one decimal, everything else with three."""
    return f"{x:.1f}" if name == "ppl" and x >= 10 else f"{x:.3f}"


def _interval(m: dict, name: str) -> tuple[float, float] | None:
    low, high = _number(m.get(f"{name}/ci_low")), _number(m.get(f"{name}/ci_high"))
    return (low, high) if low is not None and high is not None else None


def score_cell(m: dict, name: str) -> str:
    """``0.338 [0.291, 0.385]`` (bounds with the value's decimals), ``0.338`` without an interval, ``–``
    when not measured."""
    value = _number(m.get(name))
    if value is None:
        return "–"
    ci = _interval(m, name)
    digits = "{:.1f}" if name == "ppl" and value >= 10 else "{:.3f}"
    cell = digits.format(value)
    return f"{cell} [{digits.format(ci[0])}, {digits.format(ci[1])}]" if ci else cell


def format_table(
    evals: dict[str, dict],
    cos: float | None,
    titles: dict[str, str] | None = None,
    *,
    level: float | None = None,
) -> str:
    """One row per model of :data:`MODELS` present in ``evals`` (label -> evaluate result), in that order;
    ``titles`` renames rows (e.g. ``{"merged": "merged (α=β=1)"}``). ``level`` names the intervals' coverage
    in a note under the table when any cell has one."""
    titles = titles or {}
    header = "| model | " + " | ".join(title for _, title in TABLE_METRICS) + " |"
    lines = [header, "|---" * (len(TABLE_METRICS) + 1) + "|"]
    any_ci = False
    for label in MODELS:
        if label not in evals:
            continue
        m = _metrics(evals[label])
        any_ci = any_ci or any(_interval(m, k) for k, _ in TABLE_METRICS)
        cells = [score_cell(m, k) for k, _ in TABLE_METRICS]
        lines.append(f"| {titles.get(label, label)} | " + " | ".join(cells) + " |")
    if any_ci and level is not None:
        lines.append(f"\n[low, high]: {100 * level:g}% percentile bootstrap confidence interval")
    if cos is not None:
        lines.append(f"\ncos(τ_inst, τ_fin) = {cos:+.4f} (global, all tensors)")
    return "\n".join(lines)


def _domain_failures(model: str, m: dict, cpt: dict) -> list[str]:
    """The domain gain kept: MC acc's upper bound reaches the cpt model's acc, ppl ≤ PPL_FACTOR × cpt's."""
    out = []
    acc, ref = _number(m.get("harness/avg")), _number(cpt.get("harness/avg"))
    upper = (_interval(m, "harness/avg") or (acc, acc))[1]
    if upper < ref:
        shown = score_cell(m, "harness/avg")
        out.append(f"{model} finance MC acc {shown}: upper bound below cpt's {_fmt('harness/avg', ref)}")
    ppl, cpt_ppl = _number(m.get("ppl")), _number(cpt.get("ppl"))
    if ppl > PPL_FACTOR * cpt_ppl:
        out.append(
            f"{model} finance ppl {_fmt('ppl', ppl)} > {PPL_FACTOR:g} × cpt's {_fmt('ppl', cpt_ppl)}"
            f" = {_fmt('ppl', PPL_FACTOR * cpt_ppl)}"
        )
    return out


def _format_failure(model: str, m: dict, instruct: dict | None) -> str | None:
    """Instruction following kept: chat format ≥ MIN_FORMAT, or not below the instruct model's interval."""
    fmt = _number(m.get("chat/adherence"))
    if fmt >= MIN_FORMAT:
        return None
    ref = _number((instruct or {}).get("chat/adherence"))
    if ref is None:
        return f"{model} chat format {fmt:.3f} < {MIN_FORMAT:g} (no instruct score to compare with)"
    low, high = _interval(instruct, "chat/adherence") or (ref, ref)
    if fmt >= low:
        return None
    return f"{model} chat format {fmt:.3f} < {MIN_FORMAT:g} and below instruct's [{low:.3f}, {high:.3f}]"


def method_claim(evals: dict[str, dict], model: str = "merged") -> str:
    """One line, from the numbers: does ``model`` (default the merged model) keep the domain gain (finance MC
    acc's CI upper bound ≥ the cpt model's acc, and finance ppl ≤ 1.5 × the cpt model's) and instruction
    following (chat format ≥ 0.95, or within the instruct model's interval or above)? A failing condition is
    named with its numbers; a score that was not measured is named as missing."""
    m = _metrics(evals.get(model) or {})
    cpt = _metrics(evals.get("cpt") or {})
    needed = [(model, m, "harness/avg"), (model, m, "ppl"), (model, m, "chat/adherence")]
    needed += [("cpt", cpt, "harness/avg"), ("cpt", cpt, "ppl")]
    missing = [f"{who} {name}" for who, mets, name in needed if _number(mets.get(name)) is None]
    if missing:
        return f"Claim not checked: missing {', '.join(missing)}."
    instruct = _metrics(evals["instruct"]) if "instruct" in evals else None
    failures = _domain_failures(model, m, cpt)
    fmt_failure = _format_failure(model, m, instruct)
    failures += [fmt_failure] if fmt_failure else []
    if failures:
        return "Claim does not hold: " + "; ".join(failures) + "."
    return (
        f"Claim holds: {model} keeps the domain gain (finance MC acc {score_cell(m, 'harness/avg')} vs cpt "
        f"{_fmt('harness/avg', cpt['harness/avg'])}; ppl {_fmt('ppl', m['ppl'])} ≤ {PPL_FACTOR:g} × cpt "
        f"{_fmt('ppl', cpt['ppl'])}) and instruction following (chat format "
        f"{score_cell(m, 'chat/adherence')})."
    )


def summary_markdown(s: dict) -> str:
    reg = s["registered"]["merged"]
    stages = ", ".join(f"{k}: {v}" for k, v in s["stages"].items())
    claim = f"{s['claim']}\n\n" if s.get("claim") else ""
    return (
        f"# finmerge pipeline ({s['config_hash']})\n\n{s['table']}\n\n{claim}"
        f"- merged model: `{reg['name']}` version {reg['version']} aliases {', '.join(reg['aliases']) or '–'}"
        f" → `models:/{reg['name']}@{'champion' if 'champion' in reg['aliases'] else reg['version']}`\n"
        f"- promotion: {s['promotion']['decision']} (champion v{s['promotion']['champion']})\n"
        f"- cpt model: `{s['registered']['cpt']['name']}` version {s['registered']['cpt']['version']}\n"
        f"- folders: " + ", ".join(f"{k} `{v}`" for k, v in s["models"].items()) + "\n"
        f"- MLflow: `{s['tracking_uri']}` run `{s['mlflow_run_id']}`\n- stages: {stages}\n"
        f"- wall time: {s['seconds']} s\n"
    )


def publish_summary(
    parent,
    runner,
    cfg: PipelineConfig,
    models,
    evals,
    vec,
    registered,
    promotion,
    t0,
    *,
    titles: dict[str, str] | None = None,
) -> dict:
    """Log the comparison to the pipeline's MLflow run and Prefect; return the summary dict (with the
    table, and the method's claim checked on this run's numbers as ``claim``)."""
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
        "table": format_table(evals, cos, titles, level=cfg.evaluate.ci_level),
        "claim": method_claim(evals),
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

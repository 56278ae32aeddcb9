"""The sweep's output folder: the table of candidates, the choice, and the Pareto plot.

``sweep_report`` reads only the evaluation folders it is given (the validation evaluations of the
candidates), so what it chooses cannot depend on any test item.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from finmerge.config import SweepConfig
from finmerge.core import storage
from finmerge.sweep.select import pareto_front, select

FALLBACK_X = "chat/adherence"


def axes(cfg: SweepConfig) -> tuple[str, str]:
    """(instruction-following metric, finance metric) of the Pareto plot."""
    x = cfg.objective.constraints[0].metric if cfg.objective.constraints else FALLBACK_X
    return x, cfg.objective.metric


def _cell(m: dict, name: str) -> str:
    v = m.get(name)
    if not isinstance(v, int | float) or not math.isfinite(v):
        return "–"
    lo, hi = m.get(f"{name}/ci_low"), m.get(f"{name}/ci_high")
    text = f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"
    if isinstance(lo, int | float) and isinstance(hi, int | float):
        text += f" [{lo:.1f}, {hi:.1f}]" if abs(v) >= 10 else f" [{lo:.2f}, {hi:.2f}]"
    return text


def table_markdown(rows: list[dict], chosen: int, columns: list[str]) -> str:
    head = "| candidate | method | α | β | " + " | ".join(columns) + " | |"
    lines = [head, "|---" * (len(columns) + 5) + "|"]
    for i, r in enumerate(rows):
        c = r["candidate"]
        mark = ", ".join([*(["**chosen**"] if i == chosen else []), *(["α = β = 1"] if c["default"] else [])])
        cells = " | ".join(_cell(r["metrics"], k) for k in columns)
        lines.append(f"| {c['label']} | {c['method']} | {c['alpha']:g} | {c['beta']:g} | {cells} | {mark} |")
    return "\n".join(lines)


def pareto_plot(rows: list[dict], chosen: int, cfg: SweepConfig, path: Path) -> Path:
    """Finance score against instruction following, every candidate; α = β = 1 and the choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xm, ym = axes(cfg)
    pts = [(float(r["metrics"].get(xm, math.nan)), float(r["metrics"].get(ym, math.nan))) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for (x, y), r in zip(pts, rows, strict=True):
        lo, hi = r["metrics"].get(f"{ym}/ci_low"), r["metrics"].get(f"{ym}/ci_high")
        if isinstance(lo, int | float) and isinstance(hi, int | float):
            ax.errorbar(x, y, yerr=[[y - lo], [hi - y]], color="0.75", lw=1, zorder=1)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", zorder=2, label="candidates")
    for (x, y), r in zip(pts, rows, strict=True):
        c = r["candidate"]
        ax.annotate(f"α{c['alpha']:g} β{c['beta']:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)  # fmt: skip
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot(
            *zip(*(pts[i] for i in front), strict=True), color="tab:blue", alpha=0.4, label="Pareto front"
        )
    default = [i for i, r in enumerate(rows) if r["candidate"]["default"]]
    if default:
        ax.scatter(*pts[default[0]], marker="*", s=260, color="tab:orange", zorder=3, label="α = β = 1")
    ax.scatter(*pts[chosen], marker="o", s=260, facecolors="none", edgecolors="tab:red", linewidths=2,
               zorder=4, label="chosen")  # fmt: skip
    ax.set_xlabel(f"{xm} (validation)")
    ax.set_ylabel(f"{ym} (validation)")
    ax.set_title("Merge coefficient sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _metrics_of(uri: str) -> dict:
    result = storage.result_of(uri)
    if result is None:
        raise FileNotFoundError(f"{uri}: not a complete evaluation folder (no finmerge manifest)")
    return dict(result.get("metrics") or {})


def sweep_report(
    evaluations: list[dict], cfg: SweepConfig, out_uri: str, staging_dir: str, overwrite: bool = False
) -> dict:
    """``evaluations``: ``[{"candidate": Candidate.as_dict(), "merge": uri, "evaluation": uri}]``.

    Chooses a candidate by ``cfg.objective`` on the evaluations' metrics and commits ``sweep.json``,
    ``sweep.md`` and ``pareto.png`` to ``out_uri``; the result's ``chosen`` is the winning entry."""
    rows = [{**e, "metrics": _metrics_of(e["evaluation"])} for e in evaluations]
    choice = select(rows, cfg.objective)
    i = choice["index"]
    xm, ym = axes(cfg)
    columns = list(dict.fromkeys([ym, xm, *(c.metric for c in cfg.objective.constraints),
                                  *cfg.objective.tie_break]))  # fmt: skip
    table = table_markdown(rows, i, columns)
    chosen = {k: rows[i][k] for k in ("candidate", "merge", "evaluation", "metrics")}
    doc = {"objective": cfg.objective.model_dump(mode="json"), "rows": rows, "chosen": chosen,
           "reason": choice["reason"], "feasible": choice["feasible"]}  # fmt: skip
    c = chosen["candidate"]
    meta = {
        "metrics": {
            "sweep/candidates": float(len(rows)),
            "sweep/chosen_alpha": c["alpha"],
            "sweep/chosen_beta": c["beta"],
            **{f"sweep/chosen/{k}": v for k, v in chosen["metrics"].items() if k in columns},
        },
        "chosen": chosen,
        "reason": choice["reason"],
        "markdown": table,
        "artifacts": ["sweep.md", "pareto.png", "sweep.json"],
        "tables": {"sweep": [
            {"candidate": r["candidate"]["label"], **{k: r["metrics"].get(k) for k in columns},
             "chosen": j == i} for j, r in enumerate(rows)
        ]},
    }  # fmt: skip
    inputs = [e["evaluation"] for e in evaluations]
    with storage.output_folder(
        out_uri, staging_dir, meta=meta, stage="sweep", inputs=inputs, overwrite=overwrite
    ) as out:
        (out.path / "sweep.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
        (out.path / "sweep.md").write_text(
            f"# Merge coefficient sweep\n\n{table}\n\nChosen: `{c['label']}` — {choice['reason']}.\n",
            encoding="utf-8",
        )
        pareto_plot(rows, i, cfg, out.path / "pareto.png")
    return out.result()

"""Reading evaluation results: the leaderboard view of one ``results.json`` and the comparison across models
(a Markdown table and a bar chart)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

_ACC_ORDER = ("base", "instruct", "cpt", "merged")


def leaderboard_summary(report: dict) -> dict:
    """The leaderboard view of a results.json: scores x 100, best version first (for people and the CLI)."""
    fm = report.get("finmerge") or {}
    board = fm.get("leaderboard") or {}
    best = board.get("best_version")
    versions = board.get("versions") or {}

    def pct(x):
        return None if x is None else round(100 * float(x), 2)

    out = {
        "best_version": best,
        "avg": pct((versions.get(best) or {}).get("avg")) if best else None,
        "tasks": {t: pct(v) for t, v in ((versions.get(best) or {}).get("tasks") or {}).items()},
    }
    if len(versions) > 1:
        out["versions"] = {v: pct(info.get("avg")) for v, info in versions.items()}
    for key in ("ppl", "chat", "judge"):
        info = fm.get(key)
        if info:
            out[key] = {k: info[k] for k in ("ppl", "adherence", "answer_acc", "overall") if k in info}
    if fm.get("skipped"):
        out["skipped"] = fm["skipped"]
    return out


def _is_ppl(name: str) -> bool:
    return name == "ppl" or name.endswith("/ppl") or name.startswith("ppl")


def _metric_rank(name: str) -> tuple:
    if name == "harness/avg":
        return (0, name)
    if name.startswith("harness/") and name.endswith("/acc"):
        return (1, name)
    if name.startswith("harness/"):
        return (2, name)
    if name.startswith("chat/"):
        return (3, name)
    if _is_ppl(name):
        return (5, name)
    return (4, name)


def _fmt(name: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.2f}" if _is_ppl(name) else f"{value:.4f}"


def comparison_report(results: dict[str, dict], out_dir: Path) -> dict:
    """Markdown table (models × metrics, best per column in bold) and a bar chart of ``{label: metrics}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [m for m in _ACC_ORDER if m in results] + [m for m in results if m not in _ACC_ORDER]
    names = sorted({k for m in results.values() for k in m}, key=_metric_rank)

    best: dict[str, float] = {}
    for name in names:
        vals = [results[m].get(name) for m in labels]
        vals = [v for v in vals if isinstance(v, int | float) and not math.isnan(v)]
        if len(vals) > 1:
            best[name] = min(vals) if _is_ppl(name) else max(vals)
    header = "| model | " + " | ".join(names) + " |"
    sep = "|---|" + "|".join("---:" for _ in names) + "|"
    lines = [header, sep]
    for m in labels:
        cells = []
        for name in names:
            v = results[m].get(name)
            cell = _fmt(name, v)
            if name in best and v == best[name]:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    md = out_dir / "eval_comparison.md"
    md.write_text("# Evaluation comparison\n\n" + table, encoding="utf-8")

    acc_names = [n for n in names if not _is_ppl(n)]
    ppl_names = [n for n in names if _is_ppl(n)]
    panels = 1 + bool(ppl_names)
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(max(6.0, 1.1 * len(acc_names) + 2) + 3 * (panels - 1), 4.5),
        dpi=110,
        gridspec_kw={"width_ratios": [max(len(acc_names), 1), 1.2]} if panels == 2 else None,
        squeeze=False,
    )
    ax = axes[0][0]
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(acc_names))
    for j, m in enumerate(labels):
        vals = [results[m].get(n) for n in acc_names]
        vals = [float("nan") if v is None else float(v) for v in vals]
        ax.bar(x + (j - (len(labels) - 1) / 2) * width, vals, width, label=m)
    ax.set_xticks(x)
    ax.set_xticklabels(acc_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("accuracy-type metrics")
    ax.grid(axis="y", alpha=0.3)
    if labels:
        ax.legend(fontsize=8)
    if ppl_names:
        ax2 = axes[0][1]
        name = ppl_names[0]
        vals = [results[m].get(name) for m in labels]
        ax2.bar(
            labels,
            [float("nan") if v is None else float(v) for v in vals],
            color=[f"C{j}" for j in range(len(labels))],
        )
        ax2.set_title(f"{name} (lower is better)")
        ax2.tick_params(axis="x", rotation=30, labelsize=8)
        ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png = out_dir / "eval_comparison.png"
    fig.savefig(png)
    plt.close(fig)
    return {"markdown": table, "files": [str(md), str(png)]}

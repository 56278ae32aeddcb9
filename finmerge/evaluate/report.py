"""Reading evaluation results: the leaderboard view of one ``results.json`` and the comparison across models
(a Markdown table and a bar chart, with each score's confidence interval where the metrics carry one)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

_ACC_ORDER = ("base", "instruct", "cpt", "merged", "swept")
CI_SUFFIXES = ("/ci_low", "/ci_high")


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
    for key in ("ppl", "chat", "general", "judge"):
        info = fm.get(key)
        if info:
            out[key] = {k: info[k] for k in ("ppl", "adherence", "answer_acc", "overall") if k in info}
    scores = (fm.get("intervals") or {}).get("scores")
    if scores:
        out["intervals"] = scores
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


def is_interval(name: str) -> bool:
    """``<score>/ci_low`` and ``<score>/ci_high``: a score's interval, not a score."""
    return name.endswith(CI_SUFFIXES)


def interval_of(metrics: dict, name: str) -> tuple[float, float] | None:
    """The score's (low, high) when the metrics carry both bounds, else None."""
    low, high = metrics.get(f"{name}/ci_low"), metrics.get(f"{name}/ci_high")
    if isinstance(low, int | float) and isinstance(high, int | float):
        return float(low), float(high)
    return None


def _cell(metrics: dict, name: str) -> str:
    cell = _fmt(name, metrics.get(name))
    ci = interval_of(metrics, name)
    if ci and cell != "—":
        cell += f" [{_fmt(name, ci[0])}, {_fmt(name, ci[1])}]"
    return cell


def _bar_errors(results: dict[str, dict], label: str, names: list[str]) -> tuple[list, list, list]:
    """Bar heights and the distances down to ci_low and up to ci_high (0 where no interval)."""
    m = results[label]
    vals, down, up = [], [], []
    for n in names:
        v = m.get(n)
        v = float("nan") if v is None else float(v)
        ci = interval_of(m, n)
        vals.append(v)
        down.append(max(v - ci[0], 0.0) if ci and not math.isnan(v) else 0.0)
        up.append(max(ci[1] - v, 0.0) if ci and not math.isnan(v) else 0.0)
    return vals, down, up


def comparison_report(results: dict[str, dict], out_dir: Path) -> dict:
    """Markdown table (models × metrics, best per column in bold) and a bar chart of ``{label: metrics}``.

    A score whose metrics carry ``<score>/ci_low`` and ``<score>/ci_high`` shows its interval in the cell
    (``0.3100 [0.2500, 0.3700]``) and as an error bar; the bounds are not columns of their own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [m for m in _ACC_ORDER if m in results] + [m for m in results if m not in _ACC_ORDER]
    names = sorted({k for m in results.values() for k in m if not is_interval(k)}, key=_metric_rank)

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
            cell = _cell(results[m], name)
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
        vals, down, up = _bar_errors(results, m, acc_names)
        errors = [down, up] if any(down) or any(up) else None
        ax.bar(x + (j - (len(labels) - 1) / 2) * width, vals, width, label=m, yerr=errors, capsize=2)
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
        bars = [_bar_errors(results, m, [name]) for m in labels]
        down, up = [b[1][0] for b in bars], [b[2][0] for b in bars]
        ax2.bar(
            labels,
            [b[0][0] for b in bars],
            color=[f"C{j}" for j in range(len(labels))],
            yerr=[down, up] if any(down) or any(up) else None,
            capsize=3,
        )
        ax2.set_title(f"{name} (lower is better)")
        ax2.tick_params(axis="x", rotation=30, labelsize=8)
        ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png = out_dir / "eval_comparison.png"
    fig.savefig(png)
    plt.close(fig)
    return {"markdown": table, "files": [str(md), str(png)]}

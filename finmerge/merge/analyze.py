"""How independent are the instruction and domain vectors? (method.md §6), in one streaming pass.

For every floating-point tensor t, with τ_inst = θ_inst − θ_base and τ_fin = θ_cpt − θ_base, accumulate in
float64: d = ⟨τ_inst, τ_fin⟩, a = ‖τ_inst‖², b = ‖τ_fin‖², ‖θ_base‖², and the sign agreement of the elements
where both vectors are non-zero. When the vocab differs, vocab tensors are compared over the rows all three
models share. From these sums:

- per tensor: cos = d/√(ab), ‖τ_inst‖, ‖τ_fin‖, ratio ‖τ_fin‖/‖τ_inst‖, sizes relative to ‖θ_base‖,
  z = cos·√n (cos of two random directions of dimension n is ≈ N(0, 1/n));
- per group (layer index × module type, plus the non-layer tensors such as ``embed_tokens``, ``norm``,
  ``lm_head``), per layer, and globally (with and without embeddings/lm_head): the same formula over the
  *summed* d, a, b; never an average of cosines.

Zero-norm tensors (untouched by one of the trainings) get cos = NaN and are left out of the |cos| means.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import time
from pathlib import Path

import torch

from finmerge.core import storage
from finmerge.merge.method_registry import ROLES
from finmerge.merge.methods import Scratch
from finmerge.merge.triplet import Triplet, load_triplet, stage_triplet
from finmerge.models.safetensors_stream import natural_key, row_blocks

PARAM_SUFFIXES = {"weight", "bias"}
EMBED_RE = re.compile(
    r"(^|\.)(embed_tokens|wte|wpe|lm_head|embed_out|word_embeddings|tok_embeddings)(\.|$)|^output\.weight$"
)
SUM_KEYS = ("numel", "dot", "sq_inst", "sq_fin", "sq_base", "sign_agree", "sign_both")


def group_of(name: str) -> tuple[int | None, str]:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``(3, "self_attn.q_proj")``; ``lm_head.weight`` ->
    ``(None, "lm_head")``. Further numeric parts (experts) become ``*``."""
    parts = name.split(".")
    if len(parts) > 1 and parts[-1] in PARAM_SUFFIXES:
        parts = parts[:-1]
    for i, p in enumerate(parts):
        if p.isdigit():
            rest = ["*" if q.isdigit() else q for q in parts[i + 1 :]]
            return int(p), ".".join(rest) or "block"
    return None, parts[-1]


def group_name(layer: int | None, module: str) -> str:
    return module if layer is None else f"layers.{layer}.{module}"


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def stats(s: dict) -> dict:
    """Cosine, norms, ratio, relative sizes, z from summed accumulators."""
    a, b, d, n, base = s["sq_inst"], s["sq_fin"], s["dot"], s["numel"], s["sq_base"]
    cos = d / math.sqrt(a * b) if a > 0 and b > 0 else float("nan")
    ni, nf, nb = math.sqrt(a), math.sqrt(b), math.sqrt(base)
    return {
        "numel": int(n),
        "dot": d,
        "norm_inst": ni,
        "norm_fin": nf,
        "norm_base": nb,
        "cos": cos,
        "z": cos * math.sqrt(n) if n else float("nan"),
        "norm_ratio": nf / ni if ni > 0 else float("nan"),
        "rel_inst": ni / nb if nb > 0 else float("nan"),
        "rel_fin": nf / nb if nb > 0 else float("nan"),
        "projection_fin_on_inst": nf * cos if math.isfinite(cos) else float("nan"),
        "sign_agreement": s["sign_agree"] / s["sign_both"] if s["sign_both"] else float("nan"),
    }


def _add(acc: dict, s: dict) -> None:
    for k in SUM_KEYS:
        acc[k] = acc.get(k, 0) + s[k]


def _tensor_sums(tri: Triplet, name: str, block_elems: int, ws: Scratch) -> dict:
    info = tri.info("base", name)
    rows = tri.vocab_rows.get(name)
    s = dict.fromkeys(SUM_KEYS, 0)
    s["dot"] = s["sq_inst"] = s["sq_fin"] = s["sq_base"] = 0.0
    for a, b in row_blocks(info.shape, block_elems, 0, rows):
        raw = {r: getattr(tri, r).weights.read(name, a, b).reshape(-1) for r in ROLES}
        n = raw["base"].numel()
        xb = ws.get("base", n, torch.float64).copy_(raw["base"])
        ti = ws.get("inst", n, torch.float64).copy_(raw["instruct"]).sub_(xb)
        tf = ws.get("fin", n, torch.float64).copy_(raw["domain"]).sub_(xb)
        dot, sq_i, sq_f, sq_b = (float(torch.dot(u, v)) for u, v in ((ti, tf), (ti, ti), (tf, tf), (xb, xb)))
        if not all(math.isfinite(v) for v in (dot, sq_i, sq_f, sq_b)):
            for r, v in raw.items():
                if not bool(torch.isfinite(v).all()):
                    n_nan, n_inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
                    where = f" (rows {a}:{b})" if a is not None else ""
                    raise ValueError(
                        f"input {r} tensor {name}{where} in {tri.info(r, name).file}: "
                        f"{n_nan} NaN and {n_inf} Inf value(s)"
                    )
        prod = torch.mul(ti, tf, out=ws.get("prod", n, torch.float64))
        s["numel"] += n
        s["dot"] += dot
        s["sq_inst"] += sq_i
        s["sq_fin"] += sq_f
        s["sq_base"] += sq_b
        s["sign_agree"] += int(torch.gt(prod, 0, out=ws.get("mask", n, torch.bool)).sum())
        # prod is non-zero exactly where both are (float64 products of fp32-scale differences cannot underflow)
        s["sign_both"] += int(torch.count_nonzero(prod))
        del raw, xb, ti, tf, prod
    return s


def _is_embedding(name: str, shape: tuple, vocab_sizes: set) -> bool:
    return bool(EMBED_RE.search(name)) or (len(shape) == 2 and shape[0] in vocab_sizes)


def _abs_cos_summary(values: list[float]) -> tuple[float, float]:
    vals = [abs(v) for v in values if math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    return sum(vals) / len(vals), statistics.median(vals)


def analyze_vectors(
    base_uri: str,
    instruct_uri: str,
    domain_uri: str,
    out_uri: str,
    staging_dir: str,
    *,
    allow_pickle: bool = False,
    block_elems: int = 1 << 22,
    overwrite: bool = False,
) -> dict:
    """Cosine / norm analysis of τ_inst and τ_fin; writes ``vector_report.json``, ``tensors.csv`` and plots.

    ``allow_pickle`` (``models.allow_pickle``) converts pickle-only inputs to safetensors in staging with
    ``torch.load(weights_only=True)`` instead of refusing them. Every input problem (truncated files,
    mismatched shapes or tokenizers, NaN / Inf) is raised before the output folder is opened."""
    t0 = time.perf_counter()
    uris = {"base": base_uri, "instruct": instruct_uri, "domain": domain_uri}
    inputs = tuple(uris.values())
    storage.check_output(out_uri, "analyze", inputs, overwrite)
    folders = stage_triplet(uris, staging_dir, allow_pickle)
    tri = load_triplet(uris, folders, policy="shared", trust_remote_code=True)
    vocab_sizes = {v for v in (tri.base.vocab_size, tri.instruct.vocab_size, tri.domain.vocab_size) if v}

    tensors: list[dict] = []
    groups: dict[str, dict] = {}
    layers: dict[int, dict] = {}
    total: dict = {}
    no_embed: dict = {}
    ws = Scratch()
    for s in tri.sides():
        s.weights.__enter__()
    try:
        for name in sorted(tri.names, key=natural_key):
            info = tri.info("base", name)
            if not all(tri.info(r, name).is_float for r in ROLES):
                continue
            sums = _tensor_sums(tri, name, block_elems, ws)
            layer, module = group_of(name)
            gname = group_name(layer, module)
            embed = _is_embedding(name, info.shape, vocab_sizes)
            row = {
                "name": name,
                "group": gname,
                "layer": layer,
                "module": module,
                "shape": list(info.shape),
                "shared_rows": tri.vocab_rows.get(name),
                "is_embedding": embed,
                **stats(sums),
            }
            tensors.append(row)
            g = groups.setdefault(gname, {"group": gname, "layer": layer, "module": module, "n_tensors": 0})
            g["n_tensors"] += 1
            _add(g, sums)
            if layer is not None:
                _add(layers.setdefault(layer, {"layer": layer}), sums)
            _add(total, sums)
            if not embed:
                _add(no_embed, sums)
    finally:
        for s in tri.sides():
            s.weights.__exit__(None, None, None)
    if not tensors:
        raise ValueError("no floating-point tensors to analyse")
    for acc in (total, no_embed):
        for k in SUM_KEYS:
            acc.setdefault(k, 0)

    group_rows = [
        {k: g[k] for k in ("group", "layer", "module", "n_tensors")} | stats(g)
        for g in sorted(
            groups.values(), key=lambda g: (g["layer"] is not None, g["layer"] or 0, natural_key(g["module"]))
        )
    ]
    layer_rows = [{"layer": i} | stats(layers[i]) for i in sorted(layers)]
    g_all, g_ne = stats(total), stats(no_embed)
    mean_abs, median_abs = _abs_cos_summary([t["cos"] for t in tensors])
    zero = [t["name"] for t in tensors if not math.isfinite(t["cos"])]
    global_ = {
        "cos": g_all["cos"],
        "cos_no_embed": g_ne["cos"],
        "z": g_all["z"],
        "z_no_embed": g_ne["z"],
        "numel": g_all["numel"],
        "numel_no_embed": g_ne["numel"],
        "null_sigma": 1 / math.sqrt(g_all["numel"]) if g_all["numel"] else float("nan"),
        "norm_inst": g_all["norm_inst"],
        "norm_fin": g_all["norm_fin"],
        "norm_base": g_all["norm_base"],
        "norm_ratio": g_all["norm_ratio"],
        "norm_inst_no_embed": g_ne["norm_inst"],
        "norm_fin_no_embed": g_ne["norm_fin"],
        "projection_fin_on_inst": g_all["projection_fin_on_inst"],
        "sign_agreement": g_all["sign_agreement"],
        "mean_abs_cos": mean_abs,
        "median_abs_cos": median_abs,
        "n_tensors": len(tensors),
        "n_zero_norm": len(zero),
        "zero_norm_tensors": zero,
    }
    meta = {"kind": "analyze"}
    with storage.output_folder(
        out_uri, staging_dir, meta=meta, stage="analyze", inputs=inputs, overwrite=overwrite
    ) as out:
        report = {
            "definitions": {
                "tau_inst": "instruct - base",
                "tau_fin": "domain (CPT) - base",
                "cos": "<tau_inst, tau_fin> / (|tau_inst| |tau_fin|); groups and global use summed dot products "
                "and squared norms",
                "norm_ratio": "|tau_fin| / |tau_inst|",
                "z": "cos * sqrt(n); ~N(0,1) for independent random directions",
                "rel_inst/rel_fin": "|tau| / |theta_base|",
                "sign_agreement": "fraction of elements with tau_inst*tau_fin > 0 among those where both are non-zero",
            },
            "inputs": {r: storage.normalize(uris[r]) for r in ROLES},
            "vocab": tri.vocab,
            "global": global_,
            "layers": layer_rows,
            "groups": group_rows,
            "tensors": tensors,
        }
        (out.path / "vector_report.json").write_text(
            json.dumps(_nan_to_none(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        _write_csv(out.path / "tensors.csv", tensors)
        _plot_heatmap(out.path / "cos_heatmap.png", group_rows, global_)
        _plot_by_layer(out.path / "cos_by_layer.png", group_rows, layer_rows, global_)
        out.meta["counts"] = {"tensors": len(tensors), "groups": len(group_rows), "zero_norm": len(zero)}
        out.meta["metrics"] = {f"analyze/{m}": float(global_[k]) for m, k in GLOBAL_METRICS.items()}
        out.meta["metrics"]["analyze/seconds"] = float(time.perf_counter() - t0)
        out.meta["artifacts"] = ["vector_report.json", "tensors.csv", "cos_heatmap.png", "cos_by_layer.png"]
    return out.result()


# tracked metric (analyze/<name>) → its key in the global row of vector_report.json
GLOBAL_METRICS = {"cos_global": "cos", "cos_global_no_embed": "cos_no_embed"} | {
    k: k for k in ("norm_inst", "norm_fin", "norm_ratio", "mean_abs_cos")
}

CSV_COLUMNS = (
    "name",
    "group",
    "layer",
    "module",
    "shape",
    "shared_rows",
    "is_embedding",
    "numel",
    "cos",
    "z",
    "dot",
    "norm_inst",
    "norm_fin",
    "norm_base",
    "norm_ratio",
    "rel_inst",
    "rel_fin",
    "sign_agreement",
)


def _write_csv(path: Path, tensors: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for t in tensors:
            row = []
            for c in CSV_COLUMNS:
                v = t[c]
                if c == "shape":
                    v = "x".join(str(d) for d in v)
                elif v is None:
                    v = ""
                elif isinstance(v, float):
                    v = repr(v)
                row.append(v)
            w.writerow(row)


def _fmt(x: float) -> str:
    return f"{x:+.4f}" if math.isfinite(x) else "nan"


def _plot_heatmap(path: Path, group_rows: list[dict], global_: dict) -> None:
    import matplotlib
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    layer_groups = [g for g in group_rows if g["layer"] is not None]
    other = [g for g in group_rows if g["layer"] is None]
    if layer_groups:
        rows = sorted({g["layer"] for g in layer_groups})
        row_labels = [str(r) for r in rows]
        cols = sorted({g["module"] for g in layer_groups}, key=natural_key)
        cell = {(g["layer"], g["module"]): g["cos"] for g in layer_groups}
    else:  # no layer structure recognised: one row of all groups
        rows, row_labels = [None], ["-"]
        cols = [g["module"] for g in other]
        cell = {(None, g["module"]): g["cos"] for g in other}
        other = []
    mat = np.full((len(rows), len(cols)), np.nan)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            mat[i, j] = cell.get((r, c), float("nan"))
    finite = mat[np.isfinite(mat)]
    lim = float(np.abs(finite).max()) if finite.size else 1.0
    lim = lim if lim > 0 else 1e-12
    fig = Figure(
        figsize=(min(24, 2.5 + 1.3 * len(cols)), min(40, 2.2 + 0.4 * len(rows))), layout="constrained"
    )
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto")
    ax.set_xticks(range(len(cols)), labels=cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=row_labels, fontsize=8)
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    if mat.size <= 1500:
        size = 7 if mat.size <= 300 else 5
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = mat[i, j]
                if math.isfinite(v):
                    color = "white" if abs(v) > 0.6 * lim else "black"
                    ax.text(j, i, f"{v:+.3f}", ha="center", va="center", fontsize=size, color=color)
    fig.colorbar(im, ax=ax, label="cos(τ_inst, τ_fin)")
    title = f"cos(τ_inst, τ_fin) by layer × module — global {_fmt(global_['cos'])}"
    title += f", without embeddings {_fmt(global_['cos_no_embed'])}"
    if other:
        title += "\n" + ", ".join(f"{g['module']} {_fmt(g['cos'])}" for g in other)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=110)


def _plot_by_layer(path: Path, group_rows: list[dict], layer_rows: list[dict], global_: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    modules = sorted({g["module"] for g in group_rows if g["layer"] is not None}, key=natural_key)
    for m in modules:
        pts = [(g["layer"], g["cos"]) for g in group_rows if g["module"] == m and g["layer"] is not None]
        pts = [(x, y) for x, y in sorted(pts) if math.isfinite(y)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1, label=m)
    pts = [(r["layer"], r["cos"]) for r in layer_rows if math.isfinite(r["cos"])]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="black", linewidth=2.2, label="whole layer")
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("layer")
    ax.set_ylabel("cos(τ_inst, τ_fin)")
    ax.set_title(
        f"cos by layer — global {_fmt(global_['cos'])}, without embeddings {_fmt(global_['cos_no_embed'])}",
        fontsize=10,
    )
    if modules or pts:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.text(0.5, 0.5, "no layer tensors", transform=ax.transAxes, ha="center")
    fig.savefig(path, dpi=110)


# Prefect wrapper: cached on the output folder (content-keyed), retried on I/O errors, tracked in MLflow.

"""Read a mergekit YAML config as a finmerge merge: the same methods give the same tensors.

Supported: ``merge_method`` task_arithmetic, ties, dare_ties, dare_linear, linear, slerp; ``base_model``;
``models`` with scalar ``weight`` / ``density``; global ``parameters`` normalize, lambda, rescale, t (a
scalar, or a list of ``{filter, value}`` scalars, which become per-tensor rules), int8_mask (no effect:
finmerge computes in float32); ``dtype`` / ``out_dtype``; ``tokenizer_source`` / ``tokenizer.source``.

finmerge has three roles. The base model is ``base_model``; of the two other models the domain (CPT) model
is the one the tokenizer comes from, else the second listed; the instruct model is the other. slerp has
one other model: it is the domain side (t=1), ``base_model`` the instruct side (t=0) and the base.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from finmerge.config import MergeConfig, TensorRule

SUPPORTED = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "linear", "slerp")
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}  # fmt: skip


class MergekitConfigError(ValueError):
    pass


def is_mergekit(doc: Any) -> bool:
    return isinstance(doc, dict) and "merge_method" in doc


def _scalar(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MergekitConfigError(f"{where}: only scalar values are supported here (got {value!r})")
    return float(value)


def _tokenizer_source(doc: dict) -> str | None:
    tok = doc.get("tokenizer")
    if isinstance(tok, dict) and isinstance(tok.get("source"), str):
        return tok["source"]
    src = doc.get("tokenizer_source")
    return src if isinstance(src, str) else None


def _t_rules(t: Any) -> tuple[float, list[TensorRule]]:
    """mergekit's slerp ``t``: a scalar, or ``[{filter: self_attn, value: 0.3}, …, {value: 0.5}]``."""
    if not isinstance(t, list):
        return _scalar(t, "parameters.t"), []
    default, rules = 0.5, []
    for item in t:
        if not isinstance(item, dict) or "value" not in item:
            raise MergekitConfigError(f"parameters.t: expected {{filter, value}} items, got {item!r}")
        value = _scalar(item["value"], "parameters.t value (layer gradients are not supported)")
        if "filter" in item:
            rules.append(TensorRule(pattern=re.escape(str(item["filter"])), t=value))
        else:
            default = value
    return default, rules


def from_mergekit(doc: dict) -> tuple[MergeConfig, dict[str, str]]:
    """(merge config, {"base", "instruct", "domain": model path/URI}) for a parsed mergekit YAML."""
    method = doc.get("merge_method")
    if method not in SUPPORTED:
        raise MergekitConfigError(
            f"merge_method {method!r} is not supported; finmerge reads {', '.join(SUPPORTED)}"
        )
    if "slices" in doc:
        raise MergekitConfigError("mergekit 'slices' (layer surgery) are not supported; use 'models'")
    base = doc.get("base_model")
    entries = [m for m in doc.get("models") or [] if isinstance(m, dict) and m.get("model") != base]
    params = dict(doc.get("parameters") or {})
    want = 1 if method == "slerp" else 2
    if len(entries) != want:
        raise MergekitConfigError(
            f"{method}: finmerge merges {want} model(s) besides base_model, the config lists {len(entries)}"
        )
    if method != "linear" and not base:
        raise MergekitConfigError(f"{method} needs base_model")
    tok = _tokenizer_source(doc)
    if method == "slerp":
        roles = {"base": base, "instruct": base, "domain": entries[0]["model"]}
        per_model = {"domain": entries[0]}
    else:
        first, second = entries
        if tok == first["model"]:
            first, second = second, first
        roles = {"base": base or first["model"], "instruct": first["model"], "domain": second["model"]}
        per_model = {"instruct": first, "domain": second}

    fields: dict[str, Any] = {"method": method}
    for role, entry in per_model.items():
        p = {**params, **(entry.get("parameters") or {})}
        if method != "slerp":
            fields["alpha" if role == "instruct" else "beta"] = _scalar(
                p.get("weight", 1.0), f"{entry['model']}: weight"
            )
        if method in ("ties", "dare_ties", "dare_linear"):  # mergekit's density default is 1 (keep all)
            fields[f"density_{role}"] = _scalar(p.get("density", 1.0), f"{entry['model']}: density")
    for key, name in (("normalize", "normalize"), ("rescale", "rescale")):
        if key in params:
            fields[name] = bool(params[key])
    if "lambda" in params:
        fields["lambda_scale"] = _scalar(params["lambda"], "parameters.lambda")
    if method == "slerp":
        fields["t"], fields["rules"] = _t_rules(params.get("t", 0.5))
    dtype = doc.get("out_dtype") or doc.get("dtype")
    if dtype is not None:
        if str(dtype) not in DTYPES:
            raise MergekitConfigError(f"dtype {dtype!r}: expected one of {sorted(set(DTYPES))}")
        fields["dtype"] = DTYPES[str(dtype)]
    return MergeConfig(**fields), roles


def load(path: str | Path) -> tuple[MergeConfig, dict[str, str]]:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not is_mergekit(doc):
        raise MergekitConfigError(f"{path}: not a mergekit config (no merge_method)")
    return from_mergekit(doc)

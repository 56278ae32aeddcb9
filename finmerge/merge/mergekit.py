"""Read a mergekit YAML config as a finmerge merge: the same methods give the same tensors.

Supported: ``merge_method`` any of :data:`finmerge.merge.method_registry.METHODS`; ``base_model``;
``models`` with scalar ``weight`` / ``density``; global ``parameters`` normalize, lambda, rescale, t (a
scalar, or a list of ``{filter, value}`` scalars, which become per-tensor rules), int8_mask (no effect:
finmerge computes in float32); ``dtype`` / ``out_dtype``; ``tokenizer_source`` / ``tokenizer.source``.

Strict: a key mergekit does not know for the method (a typo such as ``wieght`` or ``dtpye``, at the top
level, in a ``models`` entry, in a ``parameters`` block or a ``{filter, value}`` item), a shared parameter
given per model (mergekit ignores it there), or a mergekit feature finmerge does not implement
(``slices``, ``modules``, ``chat_template``, ``tokenizer.tokens``…) is a ``ConfigError`` naming its
dotted path. A finmerge ``merge_recipe.yaml`` is checked the same way.

finmerge has three roles. The base model is ``base_model``; of the two other models the domain (CPT) model
is the one the tokenizer comes from, else the second listed; the instruct model is the other. slerp has
one other model: it is the domain side (t=1), ``base_model`` the instruct side (t=0) and the base.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finmerge.config import (
    ConfigError,
    MergeConfig,
    PipelineConfig,
    TensorRule,
    apply_overrides,
    config_from_data,
    load_config,
    parse_override,
    read_yaml,
    validation_problems,
)
from finmerge.merge.method_registry import METHOD_NAMES, METHODS, ROLES

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}  # fmt: skip

# mergekit 0.1.5's schema (mergekit/config.py, merge_methods/*): the keys finmerge reads ...
TOP_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
            "tokenizer")  # fmt: skip
MODEL_KEYS = ("model", "parameters")
TOKENIZER_KEYS = ("source",)
CONDITION_KEYS = ("filter", "value")
# ... and the ones mergekit knows that finmerge does not implement (an error, never silently ignored)
UNSUPPORTED = {
    "slices": "mergekit 'slices' (layer surgery) are not supported; use 'models'",
    "modules": "mergekit 'modules' are not supported; use 'models'",
    "chat_template": "not supported (the merged model keeps the domain model's tokenizer files)",
    "tokenizer.tokens": "not supported (finmerge does not edit token embeddings)",
    "tokenizer.pad_to_multiple_of": "not supported (finmerge does not pad the vocabulary)",
}
# finmerge's own merge_recipe.yaml (finmerge/merge/card.py recipe_yaml)
RECIPE_KEYS = ("finmerge_version", "inputs", "input_digests", "merge", "resolved")
RECIPE_RESOLVED_KEYS = ("output_dtype", "compute_dtype", "coefficients", "vocab")


class MergekitConfigError(ConfigError):
    """A mergekit YAML or merge recipe finmerge cannot read; the message names the file and the key."""


def _unknown(source: str, where: str, key: Any, allowed: tuple[str, ...]) -> MergekitConfigError:
    dotted = f"{where}.{key}" if where else str(key)
    hint = difflib.get_close_matches(str(key), allowed, n=1)
    also = f" (did you mean {hint[0]!r}?)" if hint else f" (expected one of {', '.join(allowed)})"
    return MergekitConfigError(f"{source}: {dotted}: unknown key{also}")


def _check_keys(
    source: str, where: str, node: Any, allowed: tuple[str, ...], unsupported: dict[str, str] | None = None
) -> dict:
    if not isinstance(node, dict):
        raise MergekitConfigError(f"{source}: {where or '<root>'}: expected a mapping, got {node!r}")
    for key in node:
        dotted = f"{where}.{key}" if where else str(key)
        if unsupported and dotted in unsupported:
            raise MergekitConfigError(f"{source}: {dotted}: {unsupported[dotted]}")
        if key not in allowed:
            raise _unknown(source, where, key, allowed)
    return node


def _check_parameters(source: str, where: str, params: Any, method: str, per_model: bool) -> None:
    if params is None:
        return
    shared, per_input = METHODS[method].mergekit_parameters
    allowed = per_input if per_model else shared + per_input
    if not isinstance(params, dict):
        raise MergekitConfigError(f"{source}: {where}: expected a mapping, got {params!r}")
    for key, value in params.items():
        if key not in allowed:
            if per_model and key in shared:
                raise MergekitConfigError(
                    f"{source}: {where}.{key}: a shared parameter of {method}: set it in the top-level "
                    "parameters (mergekit ignores it per model)"
                )
            if not allowed:
                raise MergekitConfigError(
                    f"{source}: {where}.{key}: unknown key ({method} takes no per-model parameters)"
                )
            raise _unknown(source, where, key, allowed)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                _check_keys(source, f"{where}.{key}" + (f"[{i}]" if isinstance(value, list) else ""),
                            item, CONDITION_KEYS)  # fmt: skip


def check_mergekit(doc: dict, source: str = "mergekit config") -> None:
    """Every key of a mergekit YAML is one mergekit documents for the method and finmerge implements."""
    _check_keys(source, "", doc, TOP_KEYS, UNSUPPORTED)
    method = doc.get("merge_method")
    if method not in METHOD_NAMES:
        raise MergekitConfigError(
            f"{source}: merge_method {method!r} is not supported; finmerge reads {', '.join(METHOD_NAMES)}"
        )
    for key in ("base_model", "tokenizer_source", "dtype", "out_dtype"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise MergekitConfigError(f"{source}: {key}: expected a string, got {doc[key]!r}")
    _check_parameters(source, "parameters", doc.get("parameters"), method, per_model=False)
    if doc.get("tokenizer") is not None:
        tok = _check_keys(source, "tokenizer", doc["tokenizer"], TOKENIZER_KEYS, UNSUPPORTED)
        if "source" in tok and not isinstance(tok["source"], str):
            raise MergekitConfigError(
                f"{source}: tokenizer.source: expected a model path, union or base, got {tok['source']!r}"
            )
    models = doc.get("models")
    if not isinstance(models, list):
        raise MergekitConfigError(f"{source}: models: expected a list of {{model, parameters}} entries")
    for i, entry in enumerate(models):
        _check_keys(source, f"models[{i}]", entry, MODEL_KEYS)
        if not isinstance(entry.get("model"), str) or not entry["model"]:
            raise MergekitConfigError(f"{source}: models[{i}].model: expected a model path or URI")
        _check_parameters(source, f"models[{i}].parameters", entry.get("parameters"), method, per_model=True)


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
        if item.get("filter") not in (None, "*"):  # mergekit: no filter or "*" matches every tensor
            rules.append(TensorRule(pattern=re.escape(str(item["filter"])), t=value))
        else:
            default = value
    return default, rules


def from_mergekit(doc: dict, source: str = "mergekit config") -> tuple[MergeConfig, dict[str, str]]:
    """(merge config, {"base", "instruct", "domain": model path/URI}) for a parsed mergekit YAML."""
    try:
        return _from_mergekit(doc, source)
    except MergekitConfigError as exc:
        msg = str(exc)
        raise MergekitConfigError(msg if msg.startswith(f"{source}: ") else f"{source}: {msg}") from None


def _from_mergekit(doc: dict, source: str) -> tuple[MergeConfig, dict[str, str]]:
    check_mergekit(doc, source)
    method = doc["merge_method"]
    spec = METHODS[method]
    base = doc.get("base_model")
    entries = [m for m in doc["models"] if m["model"] != base]
    params = dict(doc.get("parameters") or {})
    want = spec.other_models
    if len(entries) != want:
        raise MergekitConfigError(
            f"{method}: finmerge merges {want} model(s) besides base_model, the config lists {len(entries)}"
        )
    if spec.needs_base and not base:
        raise MergekitConfigError(f"{method} needs base_model")
    tok = _tokenizer_source(doc)
    if want == 1:  # base_model is the instruct side (t=0) and the base
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
        if spec.weighted:
            fields["alpha" if role == "instruct" else "beta"] = _scalar(
                p.get("weight", 1.0), f"{entry['model']}: weight"
            )
        if spec.takes_density:  # mergekit's density default is 1 (keep all)
            fields[f"density_{role}"] = _scalar(p.get("density", 1.0), f"{entry['model']}: density")
    for key, name in (("normalize", "normalize"), ("rescale", "rescale")):
        if key in params:
            fields[name] = bool(params[key])
    if "lambda" in params:
        fields["lambda_scale"] = _scalar(params["lambda"], "parameters.lambda")
    if "t" in spec.mergekit_parameters[0]:
        fields["t"], fields["rules"] = _t_rules(params.get("t", 0.5))
    dtype = doc.get("out_dtype") or doc.get("dtype")
    if dtype is not None:
        if str(dtype) not in DTYPES:
            raise MergekitConfigError(f"dtype {dtype!r}: expected one of {sorted(set(DTYPES))}")
        fields["dtype"] = DTYPES[str(dtype)]
    return MergeConfig(**fields), roles


def load(path: str | Path) -> tuple[MergeConfig, dict[str, str]]:
    doc = read_yaml(path)
    if not is_mergekit(doc):
        raise MergekitConfigError(f"{path}: not a mergekit config (no merge_method)")
    return from_mergekit(doc, str(path))


def is_recipe(doc: Any) -> bool:
    """A finmerge ``merge_recipe.yaml`` (or any YAML with top-level ``inputs`` and ``merge``)."""
    return isinstance(doc, dict) and {"inputs", "merge"} <= set(doc)


def from_recipe(doc: dict, source: str = "merge recipe") -> tuple[MergeConfig, dict[str, str]]:
    """(merge config, input URIs by role) of a finmerge merge recipe, every key checked."""
    _check_keys(source, "", doc, RECIPE_KEYS)
    inputs = _check_keys(source, "inputs", doc["inputs"], ROLES)
    for role, uri in inputs.items():
        if not isinstance(uri, str) or not uri:
            raise MergekitConfigError(f"{source}: inputs.{role}: expected a model path or URI, got {uri!r}")
    if doc.get("input_digests") is not None:
        _check_keys(source, "input_digests", doc["input_digests"], ROLES)
    if doc.get("resolved") is not None:
        _check_keys(source, "resolved", doc["resolved"], RECIPE_RESOLVED_KEYS)
    if not isinstance(doc["merge"], dict):
        raise MergekitConfigError(f"{source}: merge: expected a mapping, got {doc['merge']!r}")
    try:
        merge = MergeConfig.model_validate(doc["merge"])
    except ValidationError as exc:
        raise MergekitConfigError(f"{source}: {validation_problems(exc, 'merge')}") from None
    return merge, dict(inputs)


def load_recipe(path: str | os.PathLike) -> tuple[MergeConfig, dict[str, str]]:
    """Read a ``merge_recipe.yaml`` strictly (for finmerge.merge.execute.merge_from_recipe)."""
    doc = read_yaml(path)
    if not is_recipe(doc):
        raise MergekitConfigError(f"{path}: not a merge recipe (needs top-level inputs and merge)")
    return from_recipe(doc, str(path))


def load_merge_file(
    path: str | os.PathLike | None, sets: list[str] | None = None
) -> tuple[PipelineConfig, MergeConfig, dict[str, str]]:
    """What ``finmerge merge --config FILE --set …`` reads: (pipeline config, merge section, input URIs by
    role). FILE is a pipeline config (no URIs: the command's flags name the models), a finmerge merge
    recipe or a mergekit YAML; it is read strictly (duplicate and unknown keys are errors). ``--set merge.*``
    applies on top of the file's merge section whichever kind it is; other ``--set`` keys apply to the
    pipeline config (the defaults, for a recipe or a mergekit YAML). The returned config's ``merge`` is the
    returned merge section. ``path`` None: the built-in defaults (the CLI resolves its default file first).
    """
    sets = list(sets or [])
    if path is None:
        cfg = load_config(None, sets)
        return cfg, cfg.merge, {}
    source = str(path)
    doc = read_yaml(path)
    if is_mergekit(doc):
        merge, uris = from_mergekit(doc, source)
    elif is_recipe(doc):
        merge, uris = from_recipe(doc, source)
    else:
        cfg = config_from_data(doc, sets, source)
        return cfg, cfg.merge, {}
    merge_sets = [item for item in sets if parse_override(item)[0][0] == "merge"]
    cfg = config_from_data({}, [item for item in sets if item not in merge_sets], "--set")
    if merge_sets:
        data = apply_overrides({"merge": merge.model_dump()}, merge_sets)
        try:
            merge = MergeConfig.model_validate(data["merge"])
        except ValidationError as exc:
            raise ConfigError(f"{source} with --set: {validation_problems(exc, 'merge')}") from None
    return cfg.model_copy(update={"merge": merge}), merge, uris

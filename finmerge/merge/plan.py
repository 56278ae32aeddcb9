"""Config → typed per-tensor plan: what happens to each tensor of the output, decided before any data is read.

A tensor is merged (by its method, with its parameters: the config's, overridden by the first matching
``merge.rules`` entry), copied from the instruct model (non-float tensors, after checking that all three
inputs agree) or taken from one model unchanged (a rule with a ``source``, or a ``merge.exclude`` regex:
the domain model). :mod:`finmerge.merge.stream` executes the plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from finmerge.config import MergeConfig, TensorRule
from finmerge.merge.method_registry import METHODS, ROLES, RULE_OVERRIDES, MergeMethod, MethodParams
from finmerge.merge.triplet import PreflightError, Triplet
from finmerge.models import dtypes
from finmerge.models.dtypes import DType
from finmerge.models.safetensors_stream import row_blocks


@dataclass(frozen=True)
class TensorPlan:
    name: str
    kind: Literal["merged", "copied", "taken"]
    shape: tuple[int, ...]
    dtype: DType  # of the output tensor (torch's dtype is taken too, and converted)
    shared_rows: int | None  # rows all three models have when the domain model extends the vocab
    rule: str | None  # pattern of the rule that matched, if any
    source: str | None = None  # taken: the model it comes from
    method: MergeMethod | None = None  # merged
    params: MethodParams | None = None  # merged: the method's parameters for this tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", dtypes.of(self.dtype))

    @property
    def whole_tensor(self) -> bool:
        return self.method is not None and self.method.whole_tensor

    @property
    def uses_base(self) -> bool:
        return self.method is not None and self.method.uses_base(self.params)

    def blocks(self, block_elems: int) -> list[tuple[int | None, int | None, bool]]:
        """Row blocks ``(a, b, in_shared)`` over the rows every model has, then the domain-only rows (vocab
        extension). Methods that sparsify by magnitude or rescale by norm see all shared rows at once."""
        rows = self.shape[0] if self.shape else None
        split = self.shared_rows if self.shared_rows is not None else rows
        if self.whole_tensor and self.shape:
            head = [(0, split, True)]
        else:
            head = [(a, b, True) for a, b in row_blocks(self.shape, block_elems, 0, split)]
        if self.shared_rows is not None:
            head += [(a, b, False) for a, b in row_blocks(self.shape, block_elems, self.shared_rows, rows)]
        return head


def resolve_dtype(requested: str, instruct_config: dict) -> DType:
    """``auto`` = the instruct model's ``dtype``/``torch_dtype`` (float32 when absent or not a float dtype)."""
    if requested != "auto":
        return dtypes.OUTPUT[requested]
    for key in ("dtype", "torch_dtype"):
        val = instruct_config.get(key) or (instruct_config.get("text_config") or {}).get(key)
        if isinstance(val, str) and val.replace("torch.", "") in dtypes.OUTPUT:
            return dtypes.OUTPUT[val.replace("torch.", "")]
    return dtypes.FLOAT32


def compute_dtype(tri: Triplet) -> DType:
    """float32, or float64 when any input stores a tensor in float64."""
    if any(tri.info(r, n).dtype == "F64" for r in ROLES for n in tri.names):
        return dtypes.FLOAT64
    return dtypes.FLOAT32


def _rules(cfg: MergeConfig) -> list[tuple[TensorRule, re.Pattern]]:
    rules = [*cfg.rules, *(TensorRule(pattern=p, source="domain") for p in cfg.exclude)]
    try:
        return [(r, re.compile(r.pattern)) for r in rules]
    except re.error as exc:
        raise PreflightError([f"merge.rules / merge.exclude: invalid regex ({exc})"]) from exc


def build_plan(tri: Triplet, cfg: MergeConfig, out_dtype: DType) -> dict[str, TensorPlan]:
    """The plan of every tensor, in the inputs' order."""
    rules = _rules(cfg)
    plans: dict[str, TensorPlan] = {}
    for name in tri.names:
        ii = tri.info("instruct", name)
        rule = next((r for r, p in rules if p.search(name)), None)
        common = {
            "name": name,
            "shape": tri.info("domain", name).shape,
            "shared_rows": tri.vocab_rows.get(name),
            "rule": rule.pattern if rule else None,
        }
        if rule is not None and rule.source != "merge":
            src = tri.info(rule.source, name)
            dtype = out_dtype if src.is_float else src.dt
            plans[name] = TensorPlan(kind="taken", dtype=dtype, source=rule.source, **common)
        elif not ii.is_float:
            plans[name] = TensorPlan(kind="copied", dtype=ii.dt, **common)
        else:
            over = {k: getattr(rule, k) for k in RULE_OVERRIDES if rule and getattr(rule, k) is not None}
            method = METHODS[over.get("method", cfg.method)]
            params = method.tensor_params(cfg, over)
            plans[name] = TensorPlan(kind="merged", dtype=out_dtype, method=method, params=params, **common)
    return plans

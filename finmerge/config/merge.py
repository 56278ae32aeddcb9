"""Sections of the merge and its analysis."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finmerge.config.base import Section
from finmerge.merge.method_registry import METHOD_NAMES  # torch-free: the one list of merge methods

MergeMethod = Literal[METHOD_NAMES]  # type: ignore[valid-type]  (the registry's names, in its order)


class TensorRule(Section):
    """Per-tensor override, matched by ``re.search`` on the tensor name; the first matching rule wins."""

    pattern: str = Field(description="Regex on the tensor name, e.g. 'embed_tokens|lm_head' or 'norm'.")
    source: Literal["merge", "base", "instruct", "domain"] = Field(
        "merge", description="merge = merge this tensor; a model name = copy it from that model unchanged."
    )
    method: MergeMethod | None = Field(None, description="Another method for these tensors.")
    alpha: float | None = Field(None, description="Instruction-vector weight for these tensors.")
    beta: float | None = Field(None, description="Domain-vector weight for these tensors.")
    density: float | None = Field(None, gt=0, le=1, description="ties / dare density for these tensors.")
    t: float | None = Field(None, description="slerp t for these tensors.")


class MergeConfig(Section):
    """How θ_base, θ_inst and θ_cpt become one model (finmerge/merge/execute.py; methods: method_registry.py).

    Methods follow mergekit 0.1.5 semantics (a mergekit YAML can be given instead of this section):
    task_arithmetic = base + α·τ_inst + β·τ_fin; linear = (α·θ_inst + β·θ_cpt)/(α+β); ties = magnitude
    top-k per vector (density), sign consensus by weighted sum, mean over agreeing vectors (normalize);
    dare_ties / dare_linear = random drop (density, seeded per tensor) with L1 rescale, with / without the
    sign consensus; slerp = spherical interpolation row by row from θ_inst (t=0) to θ_cpt (t=1).
    """

    method: MergeMethod = "task_arithmetic"
    alpha: float = Field(1.0, description="Weight of the instruction vector (instruct - base).")
    beta: float = Field(1.0, description="Weight of the domain vector (cpt - base).")
    density: float = Field(
        0.5, gt=0, le=1, description="ties / dare: fraction of each task vector kept (per tensor)."
    )
    density_instruct: float | None = Field(
        None, gt=0, le=1, description="Density of τ_inst (default: density)."
    )
    density_domain: float | None = Field(None, gt=0, le=1, description="Density of τ_fin (default: density).")
    normalize: bool | None = Field(
        None, description="Divide by the summed weights (of agreeing vectors); default: ties yes, others no."
    )
    rescale: bool | None = Field(None, description="dare: rescale kept values to the L1 norm; default yes.")
    lambda_scale: float = Field(1.0, description="Scale of the combined task vector (mergekit's lambda).")
    t: float = Field(0.5, description="slerp: 0 = θ_inst, 1 = θ_cpt.")
    seed: int = Field(0, description="dare: random seed (each tensor draws from seed + a hash of its name).")
    rules: list[TensorRule] = Field(
        default_factory=list, description="Per-tensor overrides, first match wins."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Output dtype; auto = the instruct model's torch_dtype."
    )
    shard_size_mb: int = 1000
    exclude: list[str] = Field(
        default_factory=list, description="Regexes of tensor names taken from the domain model unmerged."
    )


class AnalyzeConfig(Section):
    enabled: bool = True

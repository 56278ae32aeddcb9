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


class SweepConstraint(Section):
    """A validation metric the chosen candidate must satisfy, e.g. ``chat/adherence >= 0.95``."""

    metric: str = Field(description="A metric name of the evaluate stage, e.g. 'chat/adherence' or 'ppl'.")
    op: Literal[">=", "<="] = ">="
    value: float


class SweepObjective(Section):
    """Which candidate wins: the best ``maximize`` (or ``minimize``) among those meeting every constraint."""

    metric: str = Field("harness/avg", description="Validation metric to optimise (finance MC accuracy).")
    goal: Literal["maximize", "minimize"] = "maximize"
    constraints: list[SweepConstraint] = Field(
        default_factory=lambda: [SweepConstraint(metric="chat/adherence", value=0.95)],
        description="Every one must hold on the validation split; none holding falls back to the "
        "candidate that violates them least (said in the report).",
    )
    tie_break: list[str] = Field(
        ["chat/answer_acc"],
        description="Metrics maximised, in order, between candidates within tolerance of the best; "
        "then the candidate closest to α = β = 1.",
    )
    tolerance: float = Field(
        0.0, ge=0, description="Scores within this of the best count as tied (e.g. one item's worth)."
    )


class SweepConfig(Section):
    """Coefficient search (``finmerge sweep``; in the pipeline when enabled): every candidate is merged and
    evaluated on the VALIDATION data only; the chosen one goes on to test evaluation and registration."""

    enabled: bool = Field(False, description="Run the sweep in the pipeline and register its choice.")
    alpha: list[float] = Field([0.5, 0.75, 1.0, 1.25], min_length=1, description="Grid of α (τ_inst).")
    beta: list[float] = Field([0.75, 1.0, 1.25], min_length=1, description="Grid of β (τ_fin).")
    methods: list[MergeMethod] = Field(
        default_factory=list, description="Merge methods to try (empty: merge.method only)."
    )
    density: list[float] = Field(
        default_factory=list, description="ties / dare densities to try (empty: merge.density only)."
    )
    objective: SweepObjective = SweepObjective()
    max_parallel: int = Field(
        1, ge=1, description="Candidates merged / evaluated at once (each holds a model in memory)."
    )
    shared_pass: bool = Field(
        True,
        description="Merge the candidates not yet cached in one pass over the inputs (read once, K outputs); "
        "each candidate's merge is then a cache hit of its own folder. False: one merge task per candidate.",
    )
    harness_data: list[str] = Field(
        default_factory=list,
        description="Validation multiple-choice folders (harness layout). Empty: the demo's validation split; "
        "required when the demo is off. Never the test data: coefficients chosen on test items overfit.",
    )
    heldout: str | None = Field(None, description="Validation finance text (JSONL) for perplexity.")
    chat_questions: str | None = Field(None, description="Validation finance chat questions (JSONL).")
    general_questions: str | None = Field(None, description="Validation general chat questions (JSONL).")


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
    hash_inputs: bool = Field(
        True,
        description="Record the sha256 of every input weight file that has no finmerge manifest in the model "
        "card (hashed beside the pass: a second core for its length; remembered in the staging folder while "
        "the file is unchanged, so merging the same models again reads nothing). The digests also key ties' and "
        "dare's remembered per-tensor decisions (a retrain's base → instruct vector is decided once). false: "
        "the card says 'not computed', and nothing is remembered.",
    )
    direct_writes: bool = Field(
        True,
        description="Write the output shards around the page cache (O_DIRECT) where the file system allows "
        "it: no page cache to fill (on VMs that return free memory to the host, 2-3 s of CPU per GB "
        "written), and a sweep's outputs do not evict the inputs it reads again. The same bytes either way; "
        "false: through the page cache.",
    )
    exclude: list[str] = Field(
        default_factory=list, description="Regexes of tensor names taken from the domain model unmerged."
    )
    sweep: SweepConfig = SweepConfig()


class AnalyzeConfig(Section):
    enabled: bool = True

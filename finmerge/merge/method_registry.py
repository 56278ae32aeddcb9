"""The merge methods, each declared once: its parameters, its formula for the model card, its combine step.

Everything else derives from :data:`METHODS`: the config's allowed values (``MergeConfig.method``), the CLI's
``--method`` choices, the mergekit reader, the per-tensor plan (:mod:`finmerge.merge.plan`) and the
streaming pass (:mod:`finmerge.merge.stream`). This module imports no torch (the config reads
:data:`METHOD_NAMES` from it); combine steps import the arithmetic of :mod:`finmerge.merge.methods` when
they first run.

Adding a method: write its arithmetic in :mod:`finmerge.merge.methods`, declare a :class:`MergeMethod`
subclass here and add an instance to :data:`METHODS`; the config, the CLI and the mergekit reader follow.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import torch

    from finmerge.config import MergeConfig
    from finmerge.merge.methods import Scratch

ROLES = ("base", "instruct", "domain")
CHUNK = 1 << 18  # elements per step of the elementwise phases (torch's and the kernels'): they stay in cache


def tensor_seed(seed: int, name: str, role: str) -> int:
    """A seed per (seed, tensor, model): dare draws the same whatever order tensors are merged in (chunks of
    each tensor draw from seeds derived from this, so threads and block sizes do not matter either)."""
    return (seed * 1_000_003 + zlib.crc32(f"{name}\0{role}".encode())) % 2**62


Sparsify = Literal["magnitude", "random"] | None


@dataclass(frozen=True)
class WeightedSumParams:
    """``Σ c_k·θ_k`` over (base, instruct, domain): the coefficients, one per role."""

    coeffs: tuple[float, float, float]


@dataclass(frozen=True)
class TaskVectorParams:
    """ties / dare: how each task vector is sparsified, weighted and combined."""

    alpha: float
    beta: float
    density_instruct: float
    density_domain: float
    sparsification: Sparsify
    consensus: bool
    normalize: bool
    rescale: bool
    lambda_scale: float
    seed: int


@dataclass(frozen=True)
class SlerpParams:
    t: float


MethodParams = WeightedSumParams | TaskVectorParams | SlerpParams


class MergeMethod:
    """One merge method. Class attributes say how the config, the mergekit reader and the streaming pass
    treat it; :meth:`tensor_params` resolves its parameters for one tensor, :meth:`combine` merges a block."""

    name: ClassVar[str]
    # config fields recorded under "parameters" in merge_report.json
    summary_keys: ClassVar[tuple[str, ...]] = ()
    # mergekit parameters: (shared: top-level only, per input: top level or per model)
    mergekit_parameters: ClassVar[tuple[tuple[str, ...], tuple[str, ...]]]
    other_models: ClassVar[int] = 2  # models besides the base (slerp: 1; base_model is its instruct side)
    needs_base: ClassVar[bool] = True  # mergekit's base_model is required
    weighted: ClassVar[bool] = True  # takes alpha / beta (mergekit's per-model weight)
    takes_density: ClassVar[bool] = False
    # sees all shared rows of a tensor at once (global top-k, L1 rescale, angle) instead of row blocks
    whole_tensor: ClassVar[bool] = False
    # combine reads the raw inputs in any float dtype (converted chunk by chunk) instead of upcast blocks
    raw_inputs: ClassVar[bool] = False
    sparsification: ClassVar[Sparsify] = None  # how task vectors are dropped before they are combined

    def formula(self, cfg: MergeConfig) -> str:
        raise NotImplementedError

    def tensor_params(self, cfg: MergeConfig, over: dict[str, Any]) -> MethodParams:
        """Parameters for one tensor: ``cfg``, overridden by the non-None fields of a matching rule."""
        raise NotImplementedError

    def coefficients(self, cfg: MergeConfig) -> tuple[float, float, float] | None:
        """The model-wide weighted-sum coefficients (reported and recorded in the recipe), if any."""
        return None

    def uses_base(self, params: MethodParams) -> bool:
        return True

    def combine(
        self, name: str, params: Any, x: dict[str, torch.Tensor], acc: torch.Tensor, scratch: Scratch
    ) -> torch.Tensor:
        """The merged values of one block (all of the tensor's shared rows for whole-tensor methods) in
        ``acc``, from the blocks ``x`` by role."""
        raise NotImplementedError


class WeightedSum(MergeMethod):
    """A linear method, evaluated as one weighted sum ``Σ c_k·θ_k`` (terms with ``c_k = 0`` left out), so that
    degenerate weights reproduce an input bit for bit. Streams row blocks."""

    def weights(self, alpha: float, beta: float, lambda_scale: float, normalize: bool | None):
        raise NotImplementedError

    def coefficients(self, cfg: MergeConfig) -> tuple[float, float, float]:
        return self.weights(cfg.alpha, cfg.beta, cfg.lambda_scale, cfg.normalize)

    def tensor_params(self, cfg: MergeConfig, over: dict[str, Any]) -> WeightedSumParams:
        alpha, beta = over.get("alpha", cfg.alpha), over.get("beta", cfg.beta)
        return WeightedSumParams(self.weights(alpha, beta, cfg.lambda_scale, cfg.normalize))

    def uses_base(self, params: WeightedSumParams) -> bool:
        return params.coeffs[0] != 0.0

    def combine(self, name, params: WeightedSumParams, x, acc, scratch):
        from finmerge.merge.methods import weighted_sum

        return weighted_sum([(x[r], c) for r, c in zip(ROLES, params.coeffs, strict=True)], acc)


class TaskArithmetic(WeightedSum):
    name = "task_arithmetic"
    summary_keys = ("lambda_scale", "normalize")
    mergekit_parameters = (("int8_mask", "normalize", "rescale", "lambda"), ("weight", "density"))

    def weights(self, alpha, beta, lambda_scale, normalize):
        """base + λ·(α·τ_inst + β·τ_fin) [/ (α+β) with normalize]."""
        a, b = float(alpha), float(beta)
        scale = lambda_scale / ((a + b) if normalize and abs(a + b) >= 1e-8 else 1.0)
        return 1.0 - scale * (a + b), scale * a, scale * b

    def formula(self, cfg):
        a, b = cfg.alpha, cfg.beta
        return f"θ = θ_base + {cfg.lambda_scale:g}·({a:g}·(θ_inst − θ_base) + {b:g}·(θ_cpt − θ_base))" + (
            f" / {a + b:g}" if cfg.normalize else ""
        )


class Linear(WeightedSum):
    name = "linear"
    mergekit_parameters = (("normalize",), ("weight",))
    needs_base = False

    def weights(self, alpha, beta, lambda_scale, normalize):
        """(α·θ_inst + β·θ_cpt) / (α+β); θ_base is not used."""
        a, b = float(alpha), float(beta)
        if a + b == 0:
            raise ValueError("linear merge: alpha + beta must not be 0")
        return 0.0, a / (a + b), b / (a + b)

    def formula(self, cfg):
        return f"θ = ({cfg.alpha:g}·θ_inst + {cfg.beta:g}·θ_cpt) / {cfg.alpha + cfg.beta:g}"


class GeneralizedTaskArithmetic(MergeMethod):
    """Sparsify each task vector, weight it, optionally keep only the entries whose sign agrees with the
    weighted sum, optionally divide by the weights that took part, scale by λ (mergekit 0.1.5)."""

    consensus: ClassVar[bool]
    default_normalize: ClassVar[bool]
    default_rescale: ClassVar[bool]
    formula_text: ClassVar[str]
    mergekit_parameters = TaskArithmetic.mergekit_parameters
    takes_density = True
    whole_tensor = True
    raw_inputs = True

    def formula(self, cfg):
        return self.formula_text

    def tensor_params(self, cfg: MergeConfig, over: dict[str, Any]) -> TaskVectorParams:
        density = over.get("density")
        return TaskVectorParams(
            alpha=over.get("alpha", cfg.alpha),
            beta=over.get("beta", cfg.beta),
            density_instruct=density or cfg.density_instruct or cfg.density,
            density_domain=density or cfg.density_domain or cfg.density,
            sparsification=self.sparsification,
            consensus=self.consensus,
            normalize=self.default_normalize if cfg.normalize is None else cfg.normalize,
            rescale=self.default_rescale if cfg.rescale is None else cfg.rescale,
            lambda_scale=cfg.lambda_scale,
            seed=cfg.seed,
        )

    def combine(self, name, params: TaskVectorParams, x, acc, scratch):
        from finmerge.merge import methods

        specs = [
            methods.VectorSpec(params.alpha, params.density_instruct),
            methods.VectorSpec(params.beta, params.density_domain),
        ]
        return methods.generalized_task_arithmetic(
            x["base"],
            [x["instruct"], x["domain"]],
            specs,
            sparsification=params.sparsification,
            consensus=params.consensus,
            normalize=params.normalize,
            rescale=params.rescale,
            lambda_scale=params.lambda_scale,
            seeds=[tensor_seed(params.seed, name, r) for r in ("instruct", "domain")],
            scratch=scratch,
            out=acc,
        )


class Ties(GeneralizedTaskArithmetic):
    name = "ties"
    summary_keys = ("density", "density_instruct", "density_domain", "normalize", "lambda_scale")
    sparsification, consensus, default_normalize, default_rescale = "magnitude", True, True, False
    formula_text = "θ = θ_base + λ·Σ wᵢ·mᵢ·topk(τᵢ) / Σ wᵢ·mᵢ (mᵢ: sign agrees with the weighted sum)"


_DARE_KEYS = ("density", "density_instruct", "density_domain", "rescale", "normalize", "lambda_scale", "seed")


class DareTies(GeneralizedTaskArithmetic):
    name = "dare_ties"
    summary_keys = _DARE_KEYS
    sparsification, consensus, default_normalize, default_rescale = "random", True, False, True
    formula_text = (
        "θ = θ_base + λ·Σ wᵢ·mᵢ·drop(τᵢ), drop = random keep (density) with L1 rescale, mᵢ: sign agreement"
    )


class DareLinear(GeneralizedTaskArithmetic):
    name = "dare_linear"
    summary_keys = _DARE_KEYS
    sparsification, consensus, default_normalize, default_rescale = "random", False, False, True
    formula_text = "θ = θ_base + λ·Σ wᵢ·drop(τᵢ), drop = random keep (density) with L1 rescale"


class Slerp(MergeMethod):
    """Spherical interpolation of whole tensors from θ_inst (t=0) to θ_cpt (t=1); θ_base is not used."""

    name = "slerp"
    summary_keys = ("t",)
    mergekit_parameters = (("t",), ())
    other_models = 1
    weighted = False
    whole_tensor = True

    def formula(self, cfg):
        return f"θ = slerp(θ_inst, θ_cpt, t={cfg.t:g}) row by row"

    def tensor_params(self, cfg, over):
        return SlerpParams(t=over.get("t", cfg.t))

    def uses_base(self, params):
        return False

    def combine(self, name, params: SlerpParams, x, acc, scratch):
        from finmerge.merge.methods import slerp_tensor

        return acc.copy_(slerp_tensor(params.t, x["instruct"], x["domain"]))


# The order is the one the config's error messages and the CLI's help list.
METHODS: dict[str, MergeMethod] = {
    m.name: m for m in (TaskArithmetic(), Linear(), Ties(), DareTies(), DareLinear(), Slerp())
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
# Rule fields that override the config's method parameters for the tensors a rule matches.
RULE_OVERRIDES = ("method", "alpha", "beta", "density", "t")


def method_summary(cfg: MergeConfig) -> dict:
    """The config's parameters that matter for its method (and its rules), for merge_report.json."""
    out = {k: getattr(cfg, k) for k in METHODS[cfg.method].summary_keys}
    if cfg.rules:
        out["rules"] = [r.model_dump(exclude_none=True) for r in cfg.rules]
    return out

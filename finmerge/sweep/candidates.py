"""The candidates of a sweep: every combination of the grids in ``merge.sweep``, α = β = 1 always among them."""

from __future__ import annotations

import dataclasses
import itertools

from finmerge.config import MergeConfig

DENSITY_METHODS = ("ties", "dare_ties", "dare_linear")  # the methods whose output depends on density


@dataclasses.dataclass(frozen=True)
class Candidate:
    alpha: float
    beta: float
    method: str
    density: float | None = None  # only for the methods that use it

    @property
    def label(self) -> str:
        """A short name, safe in MLflow run names and Prefect task-run names."""
        d = f"-d{self.density:g}" if self.density is not None else ""
        return f"{self.method}-a{self.alpha:g}-b{self.beta:g}{d}"

    @property
    def is_default(self) -> bool:
        """The paper's setting: α = β = 1."""
        return self.alpha == 1.0 and self.beta == 1.0

    def merge_section(self, merge: MergeConfig) -> MergeConfig:
        """``merge`` with this candidate's coefficients (everything else, per-tensor rules included, kept)."""
        update: dict = {"alpha": self.alpha, "beta": self.beta, "method": self.method}
        if self.density is not None:
            update["density"] = self.density
        return MergeConfig.model_validate({**merge.model_dump(), **update})

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "label": self.label, "default": self.is_default}


def candidates(merge: MergeConfig) -> list[Candidate]:
    """The grid α × β × method × density of ``merge.sweep`` (densities only for methods that use them),
    with α = β = 1 of ``merge.method`` added when the grid misses it, without duplicates, in grid order."""
    sw = merge.sweep
    methods = list(dict.fromkeys(sw.methods or [merge.method]))
    densities = list(dict.fromkeys(sw.density or [merge.density]))
    out: list[Candidate] = []
    for method, a, b in itertools.product(methods, sw.alpha, sw.beta):
        for d in densities if method in DENSITY_METHODS else [None]:
            out.append(Candidate(float(a), float(b), method, d))
    default = Candidate(1.0, 1.0, merge.method, merge.density if merge.method in DENSITY_METHODS else None)
    if default not in out:
        out.append(default)
    return list(dict.fromkeys(out))

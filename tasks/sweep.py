"""Sweep report: choose the merge coefficients from the candidates' validation evaluations."""

from finmerge.runner.stage import Stage, StageCall
from finmerge.sweep.report import sweep_report


def _work(c: StageCall) -> dict:
    (evaluations,) = c.args("evaluations")
    return sweep_report(evaluations, c.section, c.out_uri, c.staging_dir, **c.kw("overwrite"))


# The evaluations enter the key as values: each names its folder, whose digest is in the entry.
SWEEP = Stage("sweep", "merge.sweep", {"evaluations": "value"}, code=("finmerge.sweep",), work=_work,
              key_fields=("objective",))  # fmt: skip

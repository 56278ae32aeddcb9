"""Exact and near-duplicate removal, incremental over the batches of a corpus lineage."""

from finmerge.corpus.dedup import dedup
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    return dedup(c.inputs["corpus"], c.out_uri, c.section, c.staging_dir, prev_uri=c.inputs.get("prev"),
                 parallel=c.cfg.corpus.parallel, overwrite=c.overwrite)  # fmt: skip


DEDUP = Stage(
    name="dedup",
    section="corpus.dedup",
    inputs={"corpus": "model", "prev": "model"},  # the clean batch; the previous dedup folder (its index)
    code=("finmerge.corpus",),
    work=_work,
)

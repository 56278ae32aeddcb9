"""Exact and near-duplicate removal, incremental over the batches of a corpus lineage."""

from finmerge.corpus.dedup import dedup
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    corpus, prev = c.args("corpus", "prev")
    return dedup(corpus, c.out_uri, c.section, c.staging_dir, prev_uri=prev, **c.kw("parallel", "overwrite"))


# the clean batch, and the previous dedup folder (its index) of the same lineage
DEDUP = Stage(
    "dedup", "corpus.dedup", {"corpus": "model", "prev": "model"}, code=("finmerge.corpus",), work=_work
)

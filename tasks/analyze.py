"""How independent are the instruction and domain vectors? (method.md §6)"""

from finmerge.merge.analyze import analyze_vectors
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    i = c.inputs
    return analyze_vectors(i["base"], i["instruct"], i["domain"], c.out_uri, c.staging_dir,
                           allow_pickle=c.cfg.models.allow_pickle, overwrite=c.overwrite)  # fmt: skip


ANALYZE = Stage(
    name="analyze",
    section="analyze",
    inputs={"base": "model", "instruct": "model", "domain": "model"},
    code=("finmerge.merge", "finmerge.models"),
    work=_work,
)

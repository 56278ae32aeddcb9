"""Merge: θ = θ_base + α·τ_inst + β·τ_fin (or another registered method), streaming."""

from finmerge.merge.execute import merge_models
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    i, m = c.inputs, c.cfg.models
    return merge_models(i["base"], i["instruct"], i["domain"], c.out_uri, c.section, c.staging_dir,
                        trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle,
                        overwrite=c.overwrite)  # fmt: skip


MERGE = Stage(
    name="merge",
    section="merge",
    inputs={"base": "model", "instruct": "model", "domain": "model"},
    code=("finmerge.merge", "finmerge.models"),
    work=_work,
)

"""Merge: θ = θ_base + α·τ_inst + β·τ_fin (or another registered method), streaming."""

from finmerge.merge.execute import merge_models
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    flags = c.kw("trust_remote_code", "allow_pickle", "overwrite")
    return merge_models(*c.args("base", "instruct", "domain"), c.out_uri, c.section, c.staging_dir, **flags)


# merge.sweep only says which candidates to try: each candidate is a merge section of its own.
MERGE = Stage("merge", "merge", dict.fromkeys(("base", "instruct", "domain"), "model"),
              code=("finmerge.merge", "finmerge.models"), work=_work, key_exclude=("sweep",))  # fmt: skip

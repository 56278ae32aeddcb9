"""Merge: θ = θ_base + α·τ_inst + β·τ_fin (or another registered method), streaming."""

from finmerge.merge.execute import merge_models, merge_models_many
from finmerge.merge.pass_record import write_pass_record
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    flags = c.kw("trust_remote_code", "allow_pickle", "overwrite")
    return merge_models(*c.args("base", "instruct", "domain"), c.out_uri, c.section, c.staging_dir, **flags)


# merge.sweep only says which candidates to try: each candidate is a merge section of its own;
# merge.direct_writes changes how the bytes reach the disk, not which.
MERGE = Stage("merge", "merge", dict.fromkeys(("base", "instruct", "domain"), "model"),
              code=("finmerge.merge", "finmerge.models"), work=_work,
              key_exclude=("sweep", "direct_writes"))  # fmt: skip


def _work_many(c: StageCall) -> dict:
    """K candidates in one read of the inputs, each written to the folder MERGE planned for it."""
    from finmerge.config import MergeConfig

    (outputs,) = c.args("outputs")
    jobs = [(o["uri"], MergeConfig.model_validate(o["merge"])) for o in outputs]
    flags = c.kw("trust_remote_code", "allow_pickle")
    results = merge_models_many(*c.args("base", "instruct", "domain"), jobs, c.staging_dir, **flags)
    return write_pass_record(results, c.out_uri, c.staging_dir, **c.kw("overwrite"))


# The sweep's shared pass: its own folder records the candidate folders it wrote; "outputs" (each planned
# folder with its merge section) is keyed as a value, the models by their fingerprints.
MERGE_PASS = Stage("merge-pass", "merge", {**dict.fromkeys(("base", "instruct", "domain"), "model"),
                   "outputs": "value"}, code=("finmerge.merge", "finmerge.models"), work=_work_many,
                   key_fields=())  # fmt: skip

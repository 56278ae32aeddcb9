"""Evaluation: harness multiple choice, finance perplexity, chat probe and judge, for one model."""

from finmerge.evaluate.run import evaluate_model
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    i, m = c.inputs, c.cfg.models
    return evaluate_model(i["model"], c.out_uri, c.section, harness_dirs=list(i.get("harness") or []),
                          heldout_uri=i.get("heldout"), chat_uri=i.get("chat"), staging_dir=c.staging_dir,
                          trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle,
                          overwrite=c.overwrite, **c.options)  # fmt: skip


EVALUATE = Stage(
    name="evaluate",
    section="evaluate",
    inputs={"model": "model", "harness": "files", "heldout": "file", "chat": "file"},
    # where the data is comes in as inputs (by content); the section's paths only name the defaults
    key_exclude=("harness_data", "heldout", "chat_questions"),
    code=("finmerge.evaluate", "finmerge.models"),
    work=_work,
    retries=1,
    unkeyed=("label", "progress", "device"),
)

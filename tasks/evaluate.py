"""Evaluation: harness multiple choice, finance perplexity, chat probe and judge, for one model."""

from finmerge.evaluate.run import evaluate_model
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    model, harness, heldout, chat = c.args("model", "harness", "heldout", "chat")
    flags = c.kw("trust_remote_code", "allow_pickle", "overwrite")
    return evaluate_model(model, c.out_uri, c.section, harness_dirs=list(harness or []), heldout_uri=heldout,
                          chat_uri=chat, staging_dir=c.staging_dir, **flags, **c.options)  # fmt: skip


# Where the data is comes in as inputs (by content); the section's paths only name the defaults.
EVALUATE = Stage("evaluate", "evaluate", {"model": "model", "harness": "files", "heldout": "file", "chat": "file"},
                 key_exclude=("harness_data", "heldout", "chat_questions"), code=("finmerge.evaluate", "finmerge.models"),
                 work=_work, retries=1, unkeyed=("label", "progress", "device"))  # fmt: skip

"""Evaluation: harness multiple choice, finance perplexity, the finance and general chat probes and the judge,
for one model, every score with its bootstrap confidence interval."""

from finmerge.evaluate.run import evaluate_model
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    model, harness, heldout, chat, general = c.args("model", "harness", "heldout", "chat", "general")
    flags = c.kw("trust_remote_code", "allow_pickle", "overwrite")
    return evaluate_model(model, c.out_uri, c.section, harness_dirs=list(harness or []), heldout_uri=heldout,
                          chat_uri=chat, general_uri=general, staging_dir=c.staging_dir,
                          **flags, **c.options)  # fmt: skip


# Where the data is comes in as inputs (by content); the section's paths only name the defaults. An input
# not given (None) is fingerprinted as None: no general questions is a key of its own.
EVALUATE = Stage("evaluate", "evaluate",
                 {"model": "model", "harness": "files", "heldout": "file", "chat": "file", "general": "file"},
                 key_exclude=("harness_data", "heldout", "chat_questions", "general_questions"),
                 code=("finmerge.evaluate", "finmerge.models"),
                 work=_work, retries=1, unkeyed=("label", "progress", "device"),
                 datasets=dict.fromkeys(("harness", "heldout", "chat", "general"), "evaluation"))  # fmt: skip

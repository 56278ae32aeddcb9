"""Continual pretraining: base model + packed blocks → θ_cpt, one complete HF folder."""

from finmerge.runner.stage import Stage, StageCall
from finmerge.train.pretrain import TrainingInterrupted, pretrain


def _work(c: StageCall) -> dict:
    base, tokens, heldout = c.args("base", "tokens", "heldout")
    flags = c.kw("trust_remote_code", "allow_pickle", "on_log", "overwrite")
    return pretrain(base, tokens, c.out_uri, c.section, c.staging_dir, heldout_uri=heldout, tracking=c.tracking(),
                    **flags)  # fmt: skip


# a training job that died is retried: it resumes from its latest checkpoint
PRETRAIN = Stage("pretrain", "pretrain", {"base": "model", "tokens": "model", "heldout": "file"},
                 code=("finmerge.train", "finmerge.models"), work=_work, retry_on=(TrainingInterrupted,),
                 datasets={"tokens": "training", "heldout": "validation"})  # fmt: skip

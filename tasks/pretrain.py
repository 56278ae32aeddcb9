"""Continual pretraining: base model + packed blocks → θ_cpt, one complete HF folder."""

from finmerge.runner.stage import Stage, StageCall
from finmerge.train.pretrain import TrainingInterrupted, pretrain


def _work(c: StageCall) -> dict:
    m = c.cfg.models
    return pretrain(c.inputs["base"], c.inputs["tokens"], c.out_uri, c.section, c.staging_dir,
                    heldout_uri=c.inputs.get("heldout"), trust_remote_code=m.trust_remote_code,
                    allow_pickle=m.allow_pickle, on_log=c.on_log, tracking=c.tracking(),
                    overwrite=c.overwrite)  # fmt: skip


PRETRAIN = Stage(
    name="pretrain",
    section="pretrain",
    inputs={"base": "model", "tokens": "model", "heldout": "file"},
    code=("finmerge.train", "finmerge.models"),
    work=_work,
    # a training job that died resumes from its latest checkpoint
    retry_on=(TrainingInterrupted,),
)

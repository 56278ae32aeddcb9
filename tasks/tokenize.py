"""Tokenize the clean corpus with the base model's tokenizer and pack it into fixed-length blocks."""

from finmerge.runner.stage import Stage, StageCall
from finmerge.train.tokenize import tokenize_corpus


def _work(c: StageCall) -> dict:
    m = c.cfg.models
    return tokenize_corpus(c.inputs["corpus"], c.inputs["tokenizer"], c.out_uri, c.section, c.staging_dir,
                           trust_remote_code=m.trust_remote_code, allow_pickle=m.allow_pickle,
                           overwrite=c.overwrite)  # fmt: skip


TOKENIZE = Stage(
    name="tokenize",
    section="tokenize",
    # the corpus by its digest (a folder finmerge wrote) or listing; the base model by its tokenizer files
    inputs={"corpus": "model", "tokenizer": "tokenizer"},
    code=("finmerge.train.tokenize", "finmerge.train.tokenpack", "finmerge.corpus.textio"),
    work=_work,
)

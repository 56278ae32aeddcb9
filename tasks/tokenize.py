"""Tokenize the clean corpus with the base model's tokenizer and pack it into fixed-length blocks."""

from finmerge.runner.stage import Stage, StageCall
from finmerge.train.tokenize import tokenize_corpus


def _work(c: StageCall) -> dict:
    flags = c.kw("trust_remote_code", "allow_pickle", "overwrite")
    return tokenize_corpus(*c.args("corpus", "tokenizer"), c.out_uri, c.section, c.staging_dir, **flags)


# the corpus by its digest (a folder finmerge wrote) or listing; the base model by its tokenizer files alone
TOKENIZE = Stage("tokenize", "tokenize", {"corpus": "model", "tokenizer": "tokenizer"},
                 code=("finmerge.train.tokenize", "finmerge.train.tokenpack", "finmerge.corpus.textio"),
                 work=_work, datasets={"corpus": "training"})  # fmt: skip

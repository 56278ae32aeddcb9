"""Clean and quality-filter Japanese documents."""

from finmerge.corpus.clean import clean
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    return clean(*c.args("corpus"), c.out_uri, c.section, c.staging_dir, **c.kw("parallel", "overwrite"))


# the input is an ingest folder, by its manifest digest; the NG-word list the config names, by its bytes
CLEAN = Stage("clean", "corpus.clean", {"corpus": "model"}, config_files=("corpus.clean.ng_words_uri",),
              code=("finmerge.corpus",), work=_work)  # fmt: skip

"""Clean and quality-filter Japanese documents."""

from finmerge.corpus.clean import clean
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    return clean(c.inputs["corpus"], c.out_uri, c.section, c.staging_dir, parallel=c.cfg.corpus.parallel,
                 overwrite=c.overwrite)  # fmt: skip


CLEAN = Stage(
    name="clean",
    section="corpus.clean",
    inputs={"corpus": "model"},  # an ingest folder, by its manifest digest
    config_files=("corpus.clean.ng_words_uri",),
    code=("finmerge.corpus",),
    work=_work,
)

"""How independent are the instruction and domain vectors? (method.md §6)"""

from finmerge.merge.analyze import analyze_vectors
from finmerge.runner.stage import Stage, StageCall


def _work(c: StageCall) -> dict:
    base, inst, dom = c.args("base", "instruct", "domain")
    return analyze_vectors(base, inst, dom, c.out_uri, c.staging_dir, **c.kw("allow_pickle", "overwrite"))


ANALYZE = Stage("analyze", "analyze", dict.fromkeys(("base", "instruct", "domain"), "model"),
                code=("finmerge.merge", "finmerge.models"), work=_work)  # fmt: skip

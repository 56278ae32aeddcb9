"""The embedded demo: a generated world (filings, general corpus, chat pairs, eval sets) and demo models."""

from finmerge.demo.build import BASE_READS, INSTRUCT_READS, build_demo_base, build_demo_instruct, make_world
from finmerge.runner.stage import Stage, StageCall

_MODEL_FIELDS = ("model", "base_train", "instruct_train", "enabled")


def _world(c: StageCall) -> dict:
    return make_world(c.out_uri, c.section, c.staging_dir)


def _base(c: StageCall) -> dict:
    return build_demo_base(*c.args("world"), c.out_uri, c.section, c.staging_dir, **c.kw("on_log"))


def _instruct(c: StageCall) -> dict:
    return build_demo_instruct(
        *c.args("world", "base"), c.out_uri, c.section, c.staging_dir, **c.kw("on_log")
    )


# The world does not depend on the models trained on it; each model on its own part of the section and of the
# world (the base and the instruct model never read the evaluated companies' filings or the evaluation sets).
DEMO_WORLD = Stage("demo_world", "demo", {}, key_exclude=_MODEL_FIELDS, code=("finmerge.demo",), work=_world)
DEMO_BASE = Stage("demo_base", "demo", {"world": "model"}, key_fields=("model", "base_train", "seed"),
                  input_parts={"world": BASE_READS}, code=("finmerge.demo", "finmerge.train"), work=_base)  # fmt: skip
DEMO_INSTRUCT = Stage("demo_instruct", "demo", {"world": "model", "base": "model"}, key_fields=("instruct_train",),
                      input_parts={"world": INSTRUCT_READS}, code=("finmerge.demo", "finmerge.train"),
                      work=_instruct)  # fmt: skip

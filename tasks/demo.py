"""The embedded demo: a generated world (filings, general corpus, chat pairs, eval sets) and demo models."""

from finmerge.demo.build import build_demo_base, build_demo_instruct, make_world
from finmerge.runner.stage import Stage, StageCall

_MODEL_FIELDS = ("model", "base_train", "instruct_train", "enabled")


def _world(c: StageCall) -> dict:
    return make_world(c.out_uri, c.section, c.staging_dir)


def _base(c: StageCall) -> dict:
    return build_demo_base(c.inputs["world"], c.out_uri, c.section, c.staging_dir, on_log=c.on_log)


def _instruct(c: StageCall) -> dict:
    return build_demo_instruct(c.inputs["world"], c.inputs["base"], c.out_uri, c.section, c.staging_dir,
                               on_log=c.on_log)  # fmt: skip


DEMO_WORLD = Stage(
    name="demo_world",
    section="demo",
    inputs={},
    key_exclude=_MODEL_FIELDS,  # the world does not depend on the models trained on it
    code=("finmerge.demo",),
    work=_world,
)
DEMO_BASE = Stage(
    name="demo_base",
    section="demo",
    inputs={"world": "model"},
    key_fields=("model", "base_train", "seed"),
    code=("finmerge.demo", "finmerge.train"),
    work=_base,
)
DEMO_INSTRUCT = Stage(
    name="demo_instruct",
    section="demo",
    inputs={"world": "model", "base": "model"},
    key_fields=("instruct_train",),
    code=("finmerge.demo", "finmerge.train"),
    work=_instruct,
)

"""The embedded demo: a generated world (filings, general corpus, chat pairs, eval sets) and demo models."""

from __future__ import annotations

from finmerge import storage
from finmerge.config import DemoConfig
from finmerge.demo.build import build_demo_base, build_demo_instruct
from finmerge.orchestration import stage_task

# Fields of DemoConfig that shape the world; the model and training fields only shape the models.
WORLD_FIELDS = {"model", "base_train", "instruct_train", "enabled"}


def world_section(cfg: DemoConfig) -> dict:
    return cfg.model_dump(mode="json", exclude=WORLD_FIELDS)


def make_world(out_uri: str, cfg: DemoConfig, staging_dir: str) -> dict:
    from finmerge.demo.world import generate_world

    with storage.output_folder(out_uri, staging_dir, meta={}, stage="demo_world") as out:
        summary = generate_world(cfg, out.path)
        out.meta["counts"] = {k: v for k, v in summary.items() if isinstance(v, int | float)}
    return out.result()


world_task = stage_task("demo_world", make_world)
demo_base_task = stage_task("demo_base", build_demo_base)
demo_instruct_task = stage_task("demo_instruct", build_demo_instruct)

"""Every config field is read by some code: a field nobody reads is a setting that silently does nothing.

The schema is walked from ``PipelineConfig`` (every section, nested sections, list / dict items such as
``merge.rules``); a field counts as read when the library, the stages or the flows (not the tests, the docs
or the config package that declares it) access it as an attribute (``.name``, not a call ``.name(``) or
name it in a string (``getattr(cfg, "name")``, ``("name", ...)`` key lists).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from pydantic import BaseModel

from finmerge.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
READERS = ("finmerge", "tasks", "flows")
DECLARED_IN = ROOT / "finmerge" / "config"

# Fields read only generically (the whole section through model_dump / model_validate), so no code names
# them; each entry says where it is read. Empty today: every field is named by the code that uses it.
READ_GENERICALLY: dict[str, str] = {}


def schema_fields(model: type[BaseModel]) -> dict[str, set[str]]:
    """{field name: dotted paths that declare it}, for every section reachable from ``model``."""
    found: dict[str, set[str]] = {}
    seen: set[type[BaseModel]] = set()

    def walk(ann, prefix: str) -> None:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if ann in seen:
                return
            seen.add(ann)
            for name, field in ann.model_fields.items():
                found.setdefault(name, set()).add(f"{prefix}{name}")
                walk(field.annotation, f"{prefix}{name}.")
        for arg in get_args(ann):  # Optional[...], list[TensorRule], dict[int, float]
            walk(arg, prefix)

    walk(model, "")
    return found


def reader_source() -> str:
    files = [
        p
        for folder in READERS
        for p in sorted((ROOT / folder).rglob("*.py"))
        if not p.is_relative_to(DECLARED_IN)
    ]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def unread(fields: dict[str, set[str]], source: str) -> dict[str, set[str]]:
    def read(name: str) -> bool:
        return re.search(rf"\.{name}\b(?!\s*\()|[\"']{name}[\"']", source) is not None

    return {name: paths for name, paths in fields.items() if name not in READ_GENERICALLY and not read(name)}


def test_every_config_field_is_read_by_some_code():
    fields = schema_fields(PipelineConfig)
    assert len(fields) > 150 and "merge.rules.pattern" in fields["pattern"]  # the walk reaches nested items
    missing = unread(fields, reader_source())
    assert not missing, "config fields no code reads (remove them or wire them): " + "; ".join(
        f"{name} ({', '.join(sorted(paths))})" for name, paths in sorted(missing.items())
    )


def test_the_check_reports_a_field_no_code_reads():
    class Inner(BaseModel):
        used: int = 0
        forgotten_knob: int = 0

    class Outer(BaseModel):
        inner: list[Inner] = []

    fields = schema_fields(Outer)
    assert fields["forgotten_knob"] == {"inner.forgotten_knob"}
    source = 'x = cfg.inner[0].used\nfor k in ("inner",): pass\ncfg.forgotten_knob()\n'
    assert set(unread(fields, source)) == {"forgotten_knob"}  # a method call is not a field read
    assert READ_GENERICALLY.keys() <= fields.keys()  # the allowlist names real fields only

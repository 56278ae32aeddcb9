"""Loading: YAML plus typed ``--set section.key=value`` overrides, validated into a PipelineConfig."""

from __future__ import annotations

import os
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from finmerge.config.base import ConfigError
from finmerge.config.pipeline import PipelineConfig
from finmerge.config.strict_yaml import DuplicateKeyError, StrictLoader, _yaml_problem, read_yaml


def _unwrap(ann: Any) -> tuple[list[Any], bool]:
    """Members of a (possibly Optional / Annotated) annotation, and whether None is allowed."""
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    if get_origin(ann) in (Union, types.UnionType):
        members = [a for a in get_args(ann) if a is not type(None)]
        return members, len(members) != len(get_args(ann))
    return [ann], ann is None or ann is type(None)


def field_annotation(path: list[str], model: type[BaseModel] | None = None) -> Any:
    """Annotation of the field a dotted ``--set`` path names in :class:`PipelineConfig` (None: no such field)."""
    ann: Any = model or PipelineConfig
    for part in path:
        members, _ = _unwrap(ann)
        if len(members) != 1:
            return None
        ann = members[0]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(part)
            if field is None:
                return None
            ann = field.annotation
        elif get_origin(ann) is dict:
            ann = get_args(ann)[1]
        else:
            return None
    return ann


def _is_text(ann: Any) -> tuple[bool, bool]:
    """(every non-None member is str or a Literal of strings, None allowed)."""
    if ann is None:
        return False, False
    members, nullable = _unwrap(ann)
    for m in members:
        while get_origin(m) is Annotated:
            m = get_args(m)[0]
        if m is str:
            continue
        if get_origin(m) is Literal and all(isinstance(a, str) for a in get_args(m)):
            continue
        return False, nullable
    return bool(members), nullable


YAML_NULLS = ("null", "Null", "NULL", "~")


class _TextLoader(StrictLoader):
    """Every plain scalar stays a string (no dates, booleans, octal numbers): for lists / maps of strings."""

    yaml_implicit_resolvers: dict = {}


def _holds_text(ann: Any) -> bool:
    """A list / set / tuple of strings, or a dict whose values are strings."""
    members, _ = _unwrap(ann)
    if len(members) != 1 or get_origin(members[0]) not in (list, set, tuple, dict):
        return False
    args = [a for a in get_args(members[0]) if a is not Ellipsis]
    return bool(args) and _is_text(args[-1])[0]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value``, typed by the field it sets: a string field (str, str | None, Literal of
    strings) takes the raw text, so ``start=2024-06-17`` or ``name=no`` stay strings (``null`` / ``~``
    still unset an optional string); a list of strings is parsed as YAML with every item kept a string
    (``doc_types=[030, 120]``); other fields take the value parsed as YAML (numbers, booleans, lists, maps).
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r}: empty key")
    ann = field_annotation(path)
    text, nullable = _is_text(ann)
    if text:
        if nullable and raw.strip() in YAML_NULLS:
            return path, None
        return path, _unquoted(raw)
    loader = _TextLoader if _holds_text(ann) else StrictLoader
    try:
        value = yaml.load(raw, Loader=loader) if raw.strip() else ""  # noqa: S506
    except yaml.YAMLError as exc:
        if isinstance(exc, DuplicateKeyError):
            raise ConfigError(f"override {item!r}: {_yaml_problem(exc)}") from exc
        value = raw
    if isinstance(value, bool) and _is_number(ann):  # pydantic would read no / off / false as 0
        raise ConfigError(f"override {item!r}: {'.'.join(path)}: expected a number, got {raw.strip()!r}")
    return path, value


def _unquoted(raw: str) -> str:
    """A YAML-quoted scalar ('…' or "…", as shells and earlier docs pass them) loses its quotes; any
    other text is kept exactly."""
    stripped = raw.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        try:
            value = yaml.safe_load(stripped)
        except yaml.YAMLError:
            return raw
        if isinstance(value, str):
            return value
    return raw


def _is_number(ann: Any) -> bool:
    members, _ = _unwrap(ann)
    return bool(members) and all(m in (int, float) for m in members)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


# Keys that moved: a config that still sets one is refused like any unknown key, with where it went.
MOVED_KEYS = {
    "pretrain.seq_len": "set tokenize.seq_len: the pretrain stage trains on the block length its tokens "
    "folder was packed with",
}


def validation_problems(exc: ValidationError, prefix: str = "") -> str:
    """pydantic errors as ``dotted.key: reason; …`` on one line."""
    out = []
    for err in exc.errors():
        key = ".".join(([prefix] if prefix else []) + [str(p) for p in err["loc"]]) or "<root>"
        problem = " ".join(err["msg"].split())
        if err["type"] == "extra_forbidden" and key in MOVED_KEYS:
            problem += f" ({MOVED_KEYS[key]})"
        out.append(f"{key}: {problem}")
    return "; ".join(out)


def config_from_data(
    data: Any, overrides: list[str] | None = None, source: str = "<defaults>"
) -> PipelineConfig:
    """Validate an already-read YAML document (None = empty) with ``--set`` overrides on top."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    data = apply_overrides(data, list(overrides or []))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {validation_problems(exc)}") from exc


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read YAML strictly, apply ``section.key=value`` overrides, validate. Errors name the file and the key."""
    if path is None:
        return config_from_data({}, overrides)
    return config_from_data(read_yaml(path), overrides, str(path))

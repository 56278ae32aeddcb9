"""Strict YAML reading: a repeated key or a syntax error is a one-line ConfigError naming file, line and key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from finmerge.config.base import ConfigError


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mapping constructor refuses a key repeated in one mapping (PyYAML keeps the
    last silently). Keys brought in by a ``<<`` merge may be overridden, as YAML intends; only the keys
    written in the mapping itself are checked.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._strict_root = node  # to name the dotted path of a duplicate (looked up only on error)
        return super().construct_document(node)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Called first by construct_mapping (and for each merged mapping) before the node is rewritten,
        # so the check sees the keys as written.
        checked = self.__dict__.setdefault("_strict_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            self._check_duplicates(node)
        super().flatten_mapping(node)

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: the base class reports it
                continue
            if first is not None:
                where = _node_path(getattr(self, "_strict_root", None), node)
                dotted = f"{where}.{key}" if where else str(key)
                raise DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {dotted!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node


class DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


def _node_path(root: yaml.Node | None, target: yaml.Node) -> str:
    """Dotted path (``a.b[2].c``) of ``target`` under ``root``; '' for the root or when not found."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in seen:  # anchors / aliases share nodes
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                label = k.value if isinstance(k, yaml.ScalarNode) else "?"
                stack.append((v, f"{path}.{label}" if path else str(label)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node.value))
    return ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: 'line N, column M: problem' for a marked error."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError) and exc.context and exc.problem:
            problem = f"{exc.context}: {exc.problem}"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return " ".join(f"{where}{problem}".split())
    return " ".join(str(exc).split())


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text with :class:`StrictLoader`; errors are one-line ``ConfigError`` naming source and line."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML at {_yaml_problem(exc)}") from exc


def read_yaml(path: str | os.PathLike) -> Any:
    """Read one YAML file strictly: a repeated key or a syntax error is a ``ConfigError`` naming the file,
    the line and (for duplicates) the key's dotted path. An empty file reads as None."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: cannot read config (not UTF-8: {exc.reason})") from exc
    return parse_yaml(text, source)

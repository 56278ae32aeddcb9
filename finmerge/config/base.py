"""The base of every config section, the config error and the content hash."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _keep_default_subsections(cls, data: Any) -> Any:
        """A sub-section given in part keeps the rest of *this field's* default, not of its class: with
        ``demo.instruct_train`` defaulting to lr 3e-4 and no weight decay, ``--set demo.instruct_train.seq_len=144``
        must not bring back the class's lr 1e-3 and decay 0.1."""
        return _fill(cls, None, data) if isinstance(data, dict) else data

    def digest(self) -> str:
        """Content hash of this section (goes into the cache key of the stages that read it)."""
        return sha256_json(self.model_dump(mode="json"))


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _fill(cls: type[BaseModel], defaults: BaseModel | None, given: dict) -> dict:
    """``given`` over ``defaults`` (an instance of ``cls``; None: the class's own field defaults), recursing
    into sub-sections given in part."""
    out = dict(given)
    for name, field in cls.model_fields.items():
        default = field.default if defaults is None else getattr(defaults, name)
        if name not in given:
            if defaults is not None:
                out[name] = copy.deepcopy(default)
        # only plain section fields: a union's default may be another member than the one the dict is for
        elif (
            isinstance(given[name], dict)
            and isinstance(default, Section)
            and type(default) is field.annotation
        ):
            out[name] = _fill(field.annotation, default, given[name])
    return out

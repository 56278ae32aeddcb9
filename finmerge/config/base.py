"""The base of every config section, the config error and the content hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def digest(self) -> str:
        """Content hash of this section (goes into the cache key of the stages that read it)."""
        return sha256_json(self.model_dump(mode="json"))


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

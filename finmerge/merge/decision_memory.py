"""ties' and dare's per-tensor decisions, remembered by the digests of the two models a task vector joins.

A task vector's decisions (ties: the exact top-k threshold and its last kept tie; with ``rescale``, the L1
rescale factor; dare: the rescale factor of its seeded mask) depend only on the bytes of the base and of
that one model, the tensor, the density and the seed. A scheduled retrain merges a *new* domain model with
the *same* base and instruct every cycle, and a re-run or widened sweep merges the same three again: with
τ_inst's decisions remembered, a retrain's ties merge decides only τ_fin (3.3 ms a 2.9M-value tensor saved,
more than half the decisions' CPU).

Trust is the sha256 cache's (:mod:`finmerge.core.hash_cache`): models are identified by the digests in
their cards (finmerge manifests, Hub blob names, remembered file hashes), so decisions are remembered only
when the inputs are hashed (``merge.hash_inputs``) and only for models whose digests are complete. The
memory is a small SQLite file in the staging folder; it only ever saves work: unreadable or unwritable, the
decisions are made as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

from finmerge.merge.method_registry import ROLES

log = logging.getLogger(__name__)

FILE_NAME = "merge-decisions.sqlite"
VECTORS = ROLES[1:]  # the task vectors' models (instruct, domain), in the order the kernels take them
VERSION = 1  # bump when what a decision means changes: older rows are then never looked up

_SCHEMA = """CREATE TABLE IF NOT EXISTS decisions (
    vector TEXT NOT NULL, item TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (vector, item))"""


def model_identity(fingerprint: dict | None, files: list[Path] = ()) -> str | None:
    """One digest for a model from its card's fingerprint (every shard's sha256, or a finmerge manifest's
    digest); None when any part is unknown (not hashed, or still being hashed). A manifest's digest is what
    finmerge recorded when it wrote the folder, not a hash of the files now: the weight ``files``' size and
    times go with it, so that a shard rewritten in the folder since then is decided again."""
    if not fingerprint:
        return None
    shards = fingerprint.get("shards") or {}
    if fingerprint.get("manifest_digest"):
        try:
            stats = [(f.name, *_stat(f)) for f in sorted(files)]
        except OSError:
            return None
        return "manifest:" + json.dumps([fingerprint["manifest_digest"], stats])
    if not shards or not all(isinstance(v, str) and v for v in shards.values()):
        return None
    return "shards:" + json.dumps(shards, sort_keys=True)


class DecisionMemory:
    """The decisions of the vectors base → instruct and base → domain of one merge pass: ``get`` what an
    earlier merge remembered, ``put`` what this one made, ``save`` the new ones once the models' digests
    are known (the first merge of a model learns its digest beside the pass)."""

    def __init__(self, staging_dir: str | Path, identities: dict[str, str | None]):
        self.db = Path(staging_dir).expanduser().resolve() / FILE_NAME
        self.known: dict[str, dict[str, dict]] = {}  # role -> item -> value, as loaded
        self.made: dict[str, dict[str, dict]] = {role: {} for role in VECTORS}
        self.hits = 0
        for role in self.made:
            vector = _vector(identities, role)
            self.known[role] = self._load(vector) if vector else {}

    def get(self, role: str, item: tuple) -> dict | None:
        got = self.known[role].get(_item(item))
        self.hits += got is not None
        return got

    def put(self, role: str, item: tuple, value: dict) -> None:
        self.made[role][_item(item)] = value

    def save(self, identities: dict[str, str | None]) -> int:
        """Remember the decisions made in this pass for the vectors whose models are now identified; the
        number of rows written."""
        rows = []
        for role, made in self.made.items():
            vector = _vector(identities, role)
            if vector:
                rows += [
                    (vector, item, json.dumps(v)) for item, v in made.items() if item not in self.known[role]
                ]
        if not rows:
            return 0
        try:
            with closing(self._connect()) as conn, conn:
                conn.executemany("INSERT OR REPLACE INTO decisions VALUES (?, ?, ?)", rows)
        except (OSError, sqlite3.Error) as exc:
            log.debug("merge decisions %s not written: %s", self.db, exc)
            return 0
        return len(rows)

    def _connect(self) -> sqlite3.Connection:
        self.db.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db, timeout=10)
        conn.execute(_SCHEMA)
        return conn

    def _load(self, vector: str) -> dict[str, dict]:
        if not self.db.exists():
            return {}
        try:
            with closing(self._connect()) as conn:
                rows = conn.execute(
                    "SELECT item, value FROM decisions WHERE vector = ?", (vector,)
                ).fetchall()
            return {item: json.loads(value) for item, value in rows}
        except (OSError, sqlite3.Error, ValueError) as exc:
            log.debug("merge decisions %s not read: %s", self.db, exc)
            return {}


def _vector(identities: dict[str, str | None], role: str) -> str | None:
    base, model = identities.get("base"), identities.get(role)
    if not (base and model):
        return None
    return hashlib.sha256(json.dumps([VERSION, role, base, model]).encode()).hexdigest()


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _item(item: tuple) -> str:
    return json.dumps(item)

"""sha256 of local files, remembered by their stat identity, so that merging the same models again does not
read and hash them again (a 7B model's 14 GB cost ~13 s of CPU per input on a 2-core machine, every merge).

The same trust as git's index or DVC's state database: a file whose path, device, inode, size, mtime and
ctime are all unchanged since it was hashed is taken to hold the same bytes. ctime cannot be set from user
space, so rewriting a file in place (even restoring its mtime) invalidates the entry. One gap remains, the
one git calls "racily clean": a write in the same clock tick as the hashing leaves the times unchanged, so
a file changed less than ``SETTLE_NS`` before the hashing began is hashed but not remembered.

The cache is a small SQLite file in finmerge's staging folder (``storage.staging_dir``), which several
processes may share. It only ever saves work: if it cannot be read or written (read-only disk, a broken
file), files are hashed as before, and a finmerge manifest's recorded sha256 still takes precedence.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from finmerge.core import storage

log = logging.getLogger(__name__)

FILE_NAME = "sha256-cache.sqlite"
SETTLE_NS = 2_000_000_000  # a file changed this recently may still change within the same timestamp tick

_SCHEMA = """CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
    sha256 TEXT NOT NULL)"""


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashCache:
    """``sha256(path)``: the remembered digest while the file's stat identity is unchanged, else a fresh one.

    Safe to call from several threads (each call opens its own short-lived connection)."""

    def __init__(self, staging_dir: str | Path | None):
        self.db = None if staging_dir is None else Path(staging_dir).expanduser().resolve() / FILE_NAME

    def _connect(self) -> sqlite3.Connection:
        self.db.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db, timeout=10)
        conn.execute(_SCHEMA)
        return conn

    def lookup(self, path: Path) -> str | None:
        """The remembered sha256 of ``path`` if its stat identity still matches, else None."""
        if self.db is None or not self.db.exists():
            return None
        key = str(path.resolve())
        try:
            st = os.stat(key)
            with closing(self._connect()) as conn:
                row = conn.execute(
                    "SELECT dev, ino, size, mtime_ns, ctime_ns, sha256 FROM files WHERE path = ?", (key,)
                ).fetchone()
        except (OSError, sqlite3.Error) as exc:
            log.debug("sha256 cache %s not read: %s", self.db, exc)
            return None
        if row is None or tuple(row[:5]) != _identity(st):
            return None
        return row[5]

    def sha256(self, path: str | Path) -> str:
        path = Path(path)
        return self.lookup(path) or self.remember(path)

    def remember(self, path: str | Path) -> str:
        """Hash ``path`` and remember its sha256 (unless it changed too recently or while being read)."""
        key = str(Path(path).resolve())
        started = time.time_ns()
        before = os.stat(key)
        digest = storage.sha256_file(key)
        after = os.stat(key)
        settled = max(after.st_mtime_ns, after.st_ctime_ns) < started - SETTLE_NS
        if self.db is not None and settled and _identity(before) == _identity(after):
            try:
                with closing(self._connect()) as conn, conn:  # closed, and committed
                    conn.execute(
                        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, *_identity(after), digest),
                    )
            except (OSError, sqlite3.Error) as exc:
                log.debug("sha256 cache %s not written: %s", self.db, exc)
        return digest

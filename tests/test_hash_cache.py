"""The sha256 of input weight files, remembered while a file is unchanged (finmerge/core/hash_cache.py)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from finmerge.config import MergeConfig
from finmerge.core import hash_cache
from finmerge.core.hash_cache import HashCache
from finmerge.merge.execute import merge_models
from tests.test_merge import _triplet


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def settled(monkeypatch):
    """Files written by the test count as settled at once (the default waits 2 s after the last change)."""
    monkeypatch.setattr(hash_cache, "SETTLE_NS", 0)


def test_a_remembered_sha256_holds_only_while_the_file_is_unchanged(tmp_path, settled):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 4096)
    cache = HashCache(tmp_path / "staging")
    assert cache.lookup(f) is None
    assert cache.sha256(f) == _sha(f)
    assert cache.lookup(f) == _sha(f)
    another_process = HashCache(tmp_path / "staging")
    assert another_process.lookup(tmp_path / "." / "w.safetensors") == _sha(f)

    # rewritten in place with the same size, its mtime put back: the ctime still gives it away
    st = f.stat()
    time.sleep(0.05)
    with open(f, "r+b") as fh:
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert cache.lookup(f) is None
    assert cache.sha256(f) == _sha(f) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest()

    # replaced by another file under the same name (a new inode)
    time.sleep(0.05)
    (tmp_path / "new").write_bytes(b"c" * 4096)
    os.replace(tmp_path / "new", f)
    assert cache.lookup(f) is None
    assert cache.sha256(f) == _sha(f)


def test_a_file_changed_just_before_hashing_is_not_remembered(tmp_path):
    """The racy case: a write in the same timestamp tick as the hashing would leave the stat unchanged."""
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 4096)
    cache = HashCache(tmp_path / "staging")
    assert cache.sha256(f) == _sha(f)
    assert cache.lookup(f) is None


def test_a_broken_or_unwritable_cache_only_costs_the_hashing(tmp_path, settled):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 4096)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / hash_cache.FILE_NAME).write_bytes(b"not a database" * 100)
    assert HashCache(staging).sha256(f) == _sha(f)
    assert HashCache(staging).lookup(f) is None
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the staging folder should be")
    assert HashCache(blocked).sha256(f) == _sha(f)


def test_merging_the_same_models_again_reuses_their_sha256(tmp_path, settled):
    tri = _triplet(tmp_path / "m", committed=False)  # user folders: no finmerge manifest to take it from
    staging = tmp_path / "st"
    cache = HashCache(staging)
    weights = sorted(Path(tri["instruct"]).glob("*.safetensors"))
    assert weights and all(cache.lookup(w) is None for w in weights)

    def merge(out: str) -> None:
        merge_models(
            tri["base"], tri["instruct"], tri["domain"], str(tmp_path / out), MergeConfig(), str(staging)
        )

    merge("a")
    assert all(cache.lookup(w) == _sha(w) for w in weights)
    merge("b")
    cards = [json.loads((tmp_path / o / "merge_report.json").read_text())["summary"]["inputs"] for o in "ab"]
    assert cards[0] == cards[1]
    assert cards[1]["instruct"]["shards"] == {w.name: _sha(w) for w in weights}

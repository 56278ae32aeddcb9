"""numba's kernel cache under processes that compile at once (finmerge/merge/kernel_cache.py): two saves of
different signatures never take the same data file, and the index names a file only once its code is there.
"""

from __future__ import annotations

import fcntl
import threading

import pytest
from numba.core import caching

from finmerge.merge import fused_kernel, kernel_cache  # noqa: F401 (importing the kernels installs the lock)


def _cache(tmp_path) -> caching.IndexDataCacheFile:
    return caching.IndexDataCacheFile(str(tmp_path), "kernel-f", source_stamp=("stamp", 1))


def test_kernels_import_installs_the_locked_save():
    assert caching.IndexDataCacheFile._finmerge_locked
    assert kernel_cache.install()  # idempotent


def test_two_saves_racing_between_reading_and_writing_the_index_keep_their_own_code(tmp_path, monkeypatch):
    """numba's own save: both read the empty index, both take file 1, and one index entry names the other's
    code (what two test workers did to ``l1_chunk``). Forced here: each save, having read the index, waits
    for the other to have read it too (for up to 1 s: under the lock the second cannot)."""
    barrier = threading.Barrier(2, timeout=1.0)
    load_index = caching.IndexDataCacheFile._load_index

    def load_then_meet(self):
        overloads = load_index(self)
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return overloads

    monkeypatch.setattr(caching.IndexDataCacheFile, "_load_index", load_then_meet)
    saves = [
        threading.Thread(target=_cache(tmp_path).save, args=(key, f"code for {key}"))
        for key in ("bf16", "float32")
    ]
    for t in saves:
        t.start()
    for t in saves:
        t.join(10)
    monkeypatch.undo()
    cache = _cache(tmp_path)
    assert cache.load("bf16") == "code for bf16"
    assert cache.load("float32") == "code for float32"
    assert len({cache._load_index()[k] for k in ("bf16", "float32")}) == 2


def test_a_save_waits_for_the_lock_and_writes_the_code_before_the_index(tmp_path, monkeypatch):
    cache = _cache(tmp_path)
    seen = []
    save_index = caching.IndexDataCacheFile._save_index

    def check_then_save(self, overloads):
        seen.append({k: (tmp_path / name).exists() for k, name in overloads.items()})
        return save_index(self, overloads)

    monkeypatch.setattr(caching.IndexDataCacheFile, "_save_index", check_then_save)
    with open(tmp_path / "kernel-f.nbi.lock", "a+b") as held:  # another process saving meanwhile
        fcntl.flock(held, fcntl.LOCK_EX)
        t = threading.Thread(target=cache.save, args=("bf16", "code"))
        t.start()
        t.join(0.5)
        assert t.is_alive() and not (tmp_path / "kernel-f.nbi").exists()
    t.join(10)
    assert not t.is_alive()
    assert seen == [{"bf16": True}]  # the data file existed when the index first named it
    assert cache.load("bf16") == "code"


def test_numba_without_the_expected_methods_keeps_its_own_save(monkeypatch):
    class Other:
        def save(self, key, data): ...

    monkeypatch.setattr(caching, "IndexDataCacheFile", Other)
    assert kernel_cache.install() is False
    assert not getattr(Other, "_finmerge_locked", False)


@pytest.mark.parametrize("stamp_changes", [False, True])
def test_a_saved_entry_survives_another_signature_and_a_new_source_starts_over(tmp_path, stamp_changes):
    first = _cache(tmp_path)
    first.save("bf16", "bf16 code")
    later = (
        caching.IndexDataCacheFile(str(tmp_path), "kernel-f", source_stamp=("stamp", 2))
        if stamp_changes
        else _cache(tmp_path)
    )
    later.save("fp16", "fp16 code")
    assert later.load("fp16") == "fp16 code"
    assert later.load("bf16") == (None if stamp_changes else "bf16 code")

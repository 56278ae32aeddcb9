"""numba's on-disk cache of the kernels' machine code, made safe for processes that compile at once.

numba saves a compiled kernel by reading the function's index (signature → data file), taking the first free
file number, writing the index and then the code, with no lock. Two processes compiling the same kernel for
different signatures at once (the test suite's two workers, a sweep's Dask workers, two commands on a fresh
install) both take number 1: one's index then names the other's code, and every later process that loads
it fails on a signature mismatch (``can't unbox array``), until the cache is deleted. Seen here: two
processes compiling ``l1_chunk``, whose index entry for bf16 inputs named float32 code.

:func:`install` makes numba's save take an exclusive ``flock`` beside the index for the read-modify-write,
and write the code before the index that names it (a process loading meanwhile finds either no entry and
compiles, or the whole new file). Loads take no lock. Where numba's cache class is not the one this was
written against (its private methods renamed), or ``fcntl`` is missing, numba's own save stays.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

_NEEDS = ("save", "_load_index", "_save_index", "_save_data", "_data_name")


def install() -> bool:
    """Serialise numba's cache saves across processes (idempotent); False where numba's cache class lacks
    the methods this relies on, or the platform has no ``flock``."""
    from numba.core import caching

    cls = caching.IndexDataCacheFile
    if getattr(cls, "_finmerge_locked", False):
        return True
    if fcntl is None or not all(callable(getattr(cls, name, None)) for name in _NEEDS):
        return False
    numba_save = cls.save

    def save(self, key, data):
        index = getattr(self, "_index_path", None)
        if not isinstance(index, str):
            return numba_save(self, key, data)
        with _locked(index + ".lock"):
            overloads = self._load_index()
            name = overloads.get(key)
            if name is None:
                used = set(overloads.values())
                name = next(n for n in map(self._data_name, itertools.count(1)) if n not in used)
            self._save_data(name, data)  # the code first, then the index entry that names it
            overloads[key] = name
            self._save_index(overloads)

    cls.save = save
    cls._finmerge_locked = True
    return True


@contextmanager
def _locked(path: str):
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield

"""Write-only files that bypass the page cache (``O_DIRECT``), for model shards.

A merge writes as many bytes as one of its inputs, and a sweep K times that. Written through the page cache,
every byte first needs a fresh page: on a VM whose free memory goes back to the host (free page reporting, as
in Firecracker and most cloud sandboxes) each new page is a fault on the host, and writing cost 2–3 s of CPU
per GB there against 0.04 s per GB direct (``bench/merge.py`` measures it: ``write_floor``). On any machine the
output would also evict the inputs a sweep reads again. Direct writes go from an aligned buffer to the device;
the caller's thread waits for them (about 1.4 GB/s on that VM), which the merge's writer thread hides.

Where a file system refuses ``O_DIRECT`` (tmpfs before Linux 6.6, some FUSE mounts) the file is written
through the page cache as before; the unaligned tail of every file is, too (``O_DIRECT`` needs whole blocks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os

ALIGN = 4096  # the largest logical block size of common devices: a multiple of every smaller one
CHUNK = 8 << 20  # bytes per direct write: large enough that the device's per-request cost is small


class DirectFile:
    """``open(path, "wb")`` for sequential writes, through ``O_DIRECT`` where the file system allows it."""

    def __init__(self, path: str | os.PathLike, direct: bool = True):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self.direct = False
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, 0o644)
                self.direct = True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        if not self.direct:
            self.fd = os.open(path, flags, 0o644)
        self._buf = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT needs
        self._view = memoryview(self._buf)
        self._fill = 0  # bytes waiting in the buffer
        self._pos = 0  # file offset of the buffer's first byte
        self.direct_bytes = 0  # bytes that went around the page cache
        self._failed = False  # a write raised: close() only releases the file

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        total = len(data)
        while data:
            n = min(len(data), CHUNK - self._fill)
            self._view[self._fill : self._fill + n] = data[:n]
            self._fill += n
            data = data[n:]
            if self._fill == CHUNK:
                self._flush()
        return total

    def _flush(self) -> None:
        """Write the buffer's ``_fill`` bytes at ``_pos`` (a whole number of blocks while direct)."""
        done = 0
        try:
            while done < self._fill:
                try:
                    n = os.pwrite(self.fd, self._view[done : self._fill], self._pos + done)
                except OSError as exc:
                    if exc.errno != errno.EINVAL or not self.direct:
                        raise
                    self._buffered()  # the file system accepted the flag at open but not the write
                    continue
                if n <= 0:
                    raise OSError(errno.EIO, f"no progress writing at offset {self._pos + done}")
                done += n
                self.direct_bytes += n if self.direct else 0
        except BaseException:
            self._failed = True
            raise
        self._pos += self._fill
        self._fill = 0

    def _buffered(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if self._fill and not self._failed:
                if self.direct and self._fill % ALIGN:
                    self._buffered()  # the tail is not a whole number of blocks
                self._flush()
        finally:
            os.close(self.fd)
            self.fd = -1
            self._view.release()
            # a failed write's traceback may still hold a slice of the buffer: then it is unmapped with that
            with contextlib.suppress(BufferError):
                self._buf.close()

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Write-only files that bypass the page cache (``O_DIRECT``), for model shards.

A merge writes as many bytes as one of its inputs, and a sweep K times that. Written through the page cache,
every byte first needs a fresh page: on a VM whose free memory goes back to the host (free page reporting, as
in Firecracker and many cloud sandboxes) each new page is a fault on the host: buffered writes took 2.1–3.3 s
of CPU per GB on the 2-core development VM, against 0.04 s per GB direct. On any machine the outputs would also
evict the inputs that a sweep reads again. Direct writes go from two aligned buffers to the device (1.4 GB/s
on that VM) on a thread of their own, so the caller waits only when it outpaces the device.

Where a file system refuses ``O_DIRECT`` (tmpfs before Linux 6.6, some FUSE mounts) the file is written
through the page cache as before; the unaligned tail of every file is, too (``O_DIRECT`` needs whole blocks).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import fcntl
import mmap
import os

ALIGN = 4096  # the largest logical block size of common devices: a multiple of every smaller one
CHUNK = 4 << 20  # bytes per write: large enough that the device's per-request cost is small (1 MB: +15 %)


class DirectFile:
    """``open(path, "wb")`` for sequential writes, through ``O_DIRECT`` where the file system allows it:
    while this file's thread writes one buffer, :meth:`write` fills the other."""

    def __init__(self, path: str | os.PathLike, direct: bool = True):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self.direct = False
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, 0o666)  # less the umask, as open() does
                self.direct = True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        if not self.direct:
            self.fd = os.open(path, flags, 0o666)
        self._bufs = [mmap.mmap(-1, CHUNK) for _ in range(2)]  # page-aligned, as O_DIRECT needs
        self._views = [memoryview(b) for b in self._bufs]
        self._cur = 0  # the buffer being filled
        self._fill = 0  # bytes in it
        self._pos = 0  # the file offset they go to
        self._pool: cf.ThreadPoolExecutor | None = None  # started at the first full buffer
        self._pending: cf.Future | None = None  # the other buffer's write
        self.direct_bytes = 0  # bytes that went around the page cache
        self._failed = False  # a write raised: close() only releases the file

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        total = len(data)
        view = self._views[self._cur]
        while data:
            n = min(len(data), CHUNK - self._fill)
            view[self._fill : self._fill + n] = data[:n]
            self._fill += n
            data = data[n:]
            if self._fill == CHUNK:
                self._hand_off()
                view = self._views[self._cur]
        return total

    def _hand_off(self) -> None:
        """The full buffer goes to the writing thread; filling goes on in the other once its write is done."""
        self._wait()
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="direct-write")
        self._pending = self._pool.submit(self._write_out, self._cur, self._fill, self._pos)
        self._pos += self._fill
        self._fill = 0
        self._cur ^= 1

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except BaseException:
                self._failed = True
                raise

    def _write_out(self, i: int, n: int, pos: int) -> None:
        """Buffer ``i``'s first ``n`` bytes at ``pos`` (a whole number of blocks while direct)."""
        view, done = self._views[i], 0
        while done < n:
            try:
                k = os.pwrite(self.fd, view[done:n], pos + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self._buffered()  # the file system accepted the flag at open but not the write
                continue
            if k <= 0:
                raise OSError(errno.EIO, f"no progress writing at offset {pos + done}")
            done += k
            self.direct_bytes += k if self.direct else 0

    def _buffered(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if not self._failed:
                self._wait()
                if self._fill:
                    if self.direct and self._fill % ALIGN:
                        self._buffered()  # the tail is not a whole number of blocks
                    self._write_out(self._cur, self._fill, self._pos)
                    self._pos += self._fill
                    self._fill = 0
        except BaseException:
            self._failed = True
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)  # a write still running after a failure ends before the close
            os.close(self.fd)
            self.fd = -1
            for view, buf in zip(self._views, self._bufs, strict=True):
                view.release()
                # a failed write's traceback may still hold a slice of a buffer: then it goes with that
                with contextlib.suppress(BufferError):
                    buf.close()

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

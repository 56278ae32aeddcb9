"""Model shards written around the page cache (``O_DIRECT``): the same bytes, and pages really not cached."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os

import numpy as np
import pytest
import torch

from finmerge.models import direct_file
from finmerge.models.direct_file import CHUNK, DirectFile
from finmerge.models.shard_writer import ShardedWriter

# a header of odd length, blocks of odd sizes, one larger than the buffer, a tail that is not whole blocks
SIZES = [123, 5, 4096 - 128, CHUNK + 77, 3 * 4096, 1, CHUNK - 9000, 10_001]


def _pieces(seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in SIZES]


def _resident_pages(path) -> tuple[int, int]:
    """(pages of the file in the page cache, pages in all), asked of the kernel with mincore(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        mm = mmap.mmap(
            f.fileno(), size, access=mmap.ACCESS_COPY
        )  # a private map: mincore sees the file's pages
    try:
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(v & 1 for v in vec), pages
    finally:
        mm.close()


@pytest.mark.parametrize("direct", [True, False])
def test_the_file_holds_exactly_the_bytes_written(tmp_path, direct):
    pieces = _pieces()
    path = tmp_path / "out.bin"
    with DirectFile(path, direct=direct) as f:
        for p in pieces:
            assert f.write(memoryview(p)) == len(p)
    assert path.read_bytes() == b"".join(pieces)


def test_direct_writes_leave_the_page_cache_alone(tmp_path):
    """On a file system that takes O_DIRECT the data goes to the device: only the unaligned tail is cached.
    Written the ordinary way, every page is. (CI runs on such a file system and must use it.)"""
    data = b"".join(_pieces(1)) * 3
    direct_path, buffered_path = tmp_path / "direct.bin", tmp_path / "buffered.bin"
    with DirectFile(direct_path) as f:
        f.write(data)
    took_direct = f.direct_bytes > 0
    with DirectFile(buffered_path, direct=False) as f:
        f.write(data)
    cached, pages = _resident_pages(buffered_path)
    assert cached == pages  # the check itself sees cached pages
    if os.environ.get("CI"):
        assert took_direct, "the CI machine's temporary folder refused O_DIRECT"
    cached, pages = _resident_pages(direct_path)
    if took_direct:
        assert cached <= CHUNK // mmap.PAGESIZE + 1 < pages, (cached, pages)  # at most the last buffer's tail
    assert direct_path.read_bytes() == data


def test_a_file_system_that_refuses_o_direct_gets_ordinary_writes(tmp_path, monkeypatch):
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_file.os, "open", refusing_open)
    pieces = _pieces(2)
    with DirectFile(tmp_path / "out.bin") as f:
        assert not f.direct
        for p in pieces:
            f.write(p)
    assert (tmp_path / "out.bin").read_bytes() == b"".join(pieces)


def test_a_write_refused_after_the_open_continues_through_the_page_cache(tmp_path, monkeypatch):
    """Some file systems accept the flag at open and refuse the write (EINVAL): no byte is lost."""
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd, data, offset):
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT and not refused:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct_file.os, "pwrite", pwrite)
    pieces = _pieces(3)
    with DirectFile(tmp_path / "out.bin") as f:
        for p in pieces:
            f.write(p)
    assert refused == [0] and not f.direct
    assert (tmp_path / "out.bin").read_bytes() == b"".join(pieces)


def test_other_write_errors_are_raised(tmp_path, monkeypatch):
    """A write error (here a full disk) reaches the caller by close() at the latest; a second close() does
    not raise it again."""

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_file.os, "pwrite", full)
    f = DirectFile(tmp_path / "out.bin")
    with pytest.raises(OSError) as err:
        f.write(b"x" * (CHUNK + 1))  # one buffer handed to the writing thread
        f.close()
    assert err.value.errno == errno.ENOSPC
    f.close()


@pytest.mark.parametrize("direct", [True, False])
def test_sharded_writer_shards_are_the_same_either_way(tmp_path, direct):
    rng = np.random.default_rng(4)
    tensors = {
        "a.weight": torch.from_numpy(rng.standard_normal((700, 999), dtype=np.float32)).to(torch.bfloat16),
        "b.bias": torch.from_numpy(rng.standard_normal(33, dtype=np.float32)),
        "c.weight": torch.from_numpy(rng.standard_normal((2050, 1024), dtype=np.float32)).to(torch.bfloat16),
    }
    specs = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    w = ShardedWriter(tmp_path / "out", specs, max_shard_bytes=3_000_000, background=True, direct=direct)
    for name in list(w.order):
        t = tensors[name]
        for a in range(0, t.shape[0], 256):  # row blocks, as the merge writes them
            w.write(name, t[a : a + 256])
    digests = w.close()
    from safetensors.torch import load_file

    assert len(digests) == 2
    for file, digest in digests.items():
        assert hashlib.sha256((tmp_path / "out" / file).read_bytes()).hexdigest() == digest
        for name, t in load_file(tmp_path / "out" / file).items():
            assert torch.equal(t, tensors[name])
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_the_file_gets_the_permissions_open_gives_it(tmp_path):
    """Mode 0o666 less the umask, as ``open(path, "wb")`` creates files (a group-writable umask stays so)."""
    import stat

    old = os.umask(0o002)
    try:
        with DirectFile(tmp_path / "direct.bin") as f:
            f.write(b"x")
        with open(tmp_path / "open.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    modes = {stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("direct.bin", "open.bin")}
    assert modes == {0o664}

"""Streaming safetensors input: header-only inspection and row-chunked reads (the writer: ``shard_writer``).

Nothing here holds a whole model, or even a whole tensor, in memory:

- :class:`SafetensorsModel` reads the headers of a model folder's weight files (names, dtypes, shapes) without
  touching the data, and maps a tensor's row blocks from the page cache (:meth:`SafetensorsModel.view`).
  Each header is checked against its file first (:func:`inspect_file`): a truncated download, offsets that
  do not match the shape, overlapping or out-of-file tensors fail there, naming the file and the tensor.
- :class:`~finmerge.models.shard_writer.ShardedWriter` plans the output shards from the tensor specs up front
  (so every shard header is known before its data), then streams each tensor's bytes straight to disk, block
  by block, hashing as it goes.
  Shards are written to a temp name and renamed when complete; the HF layout is ``model.safetensors`` for one
  shard, else ``model-0000k-of-0000N.safetensors`` plus ``model.safetensors.index.json``.

The safetensors format is: 8-byte little-endian header length, a JSON header (``name -> {dtype, shape,
data_offsets}`` plus ``__metadata__``), padded with spaces to a multiple of 8, then the raw little-endian bytes.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from finmerge.models import dtypes
from finmerge.models import loading as modelio

_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux's value; the module names it from 3.13

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def natural_key(name: str) -> tuple:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def _read_header_bytes(path: str | Path) -> tuple[dict, int, int]:
    """``(header, header length, file size)``; a file cut inside its header is a clear error."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        raw = fh.read(8)
        if len(raw) != 8:
            raise modelio.ModelFormatError(
                f"{path}: truncated safetensors file ({size} bytes, shorter than the 8-byte header length)"
            )
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES:
            raise modelio.ModelFormatError(f"{path}: not a safetensors file (header length {n})")
        if n > size - 8:
            raise modelio.ModelFormatError(
                f"{path}: truncated safetensors file: the header says it is {n} bytes long but only "
                f"{size - 8} byte(s) follow (file cut short?)"
            )
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise modelio.ModelFormatError(f"{path}: unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise modelio.ModelFormatError(f"{path}: safetensors header is not a JSON object")
    return header, n, size


def read_header(path: str | Path) -> dict:
    """The JSON header of one safetensors file (no tensor data is read)."""
    return _read_header_bytes(path)[0]


def _entry(path: Path, name: str, entry) -> tuple[str, tuple[int, ...], int, int]:
    """``(dtype, shape, begin, end)`` of one header entry, checked for form and for size."""
    ok = (
        isinstance(entry, dict)
        and isinstance(entry.get("dtype"), str)
        and isinstance(entry.get("shape"), list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in entry["shape"])
        and isinstance(entry.get("data_offsets"), list)
        and len(entry["data_offsets"]) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in entry["data_offsets"])
    )
    if not ok:
        raise modelio.ModelFormatError(f"{path}: tensor {name}: malformed header entry {str(entry)[:200]}")
    dtype, shape = entry["dtype"], tuple(entry["shape"])
    begin, end = entry["data_offsets"]
    if not 0 <= begin <= end:
        raise modelio.ModelFormatError(f"{path}: tensor {name}: invalid data_offsets [{begin}, {end}]")
    dt = dtypes.BY_ST.get(dtype)
    if dt is not None and end - begin != dtypes.nbytes(dt, shape):
        raise modelio.ModelFormatError(
            f"{path}: tensor {name}: the header gives shape {list(shape)} {dtype} "
            f"({dtypes.nbytes(dt, shape)} bytes) but data_offsets span {end - begin} bytes"
        )
    return dtype, shape, begin, end


def _check_coverage(path: Path, spans: list[tuple[int, int, str]], data_size: int) -> None:
    """The tensors tile the data section exactly, as the safetensors format requires: no byte beyond the
    end of the file (a truncated download), no overlap, no gap, nothing after the last tensor."""
    beyond = [(b, e, n) for b, e, n in spans if e > data_size]
    if beyond:
        b, e, n = min(beyond)
        raise modelio.ModelFormatError(
            f"{path}: truncated safetensors file: tensor {n} needs data bytes [{b}, {e}) but the file holds "
            f"only {data_size} ({len(beyond)} tensor(s) affected; file cut short?)"
        )
    spans = sorted(spans)
    for (_, e0, n0), (b, e, n) in zip(spans, spans[1:], strict=False):
        if b < e0:
            raise modelio.ModelFormatError(f"{path}: tensor {n}: data_offsets [{b}, {e}) overlap tensor {n0}")
    pos = 0
    for b, e, n in spans:
        if b != pos:
            raise modelio.ModelFormatError(
                f"{path}: tensor {n}: data_offsets [{b}, {e}) leave a gap of {b - pos} bytes before it"
            )
        pos = e
    if pos != data_size:
        raise modelio.ModelFormatError(
            f"{path}: {data_size - pos} unexplained byte(s) after the last tensor (not a valid safetensors file)"
        )


def inspect_file(path: str | Path) -> dict[str, TensorInfo]:
    """Every tensor of one safetensors file from its header, with the header checked against the file size,
    so a truncated or lying file fails here, naming the file and the tensor, before any data is read."""
    path = Path(path)
    header, n, size = _read_header_bytes(path)
    data_start, out, spans = 8 + n, {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _entry(path, name, entry)
        spans.append((begin, end, name))
        out[name] = TensorInfo(name, dtype, shape, path, data_start + begin)
    _check_coverage(path, spans, size - data_start)
    return out


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code: F32, BF16, ...
    shape: tuple[int, ...]
    file: Path
    offset: int = -1  # absolute byte offset of the data in ``file`` (-1: unknown)

    @property
    def dt(self) -> dtypes.DType | None:
        """The element type, or None for a safetensors code finmerge does not know."""
        return dtypes.BY_ST.get(self.dtype)

    @property
    def is_float(self) -> bool:
        dt = self.dt
        return dt is not None and dt.is_floating_point

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class SafetensorsModel:
    """The weights of one HF model folder, inspected from headers and read in row blocks.

    Use as a context manager (``with SafetensorsModel(folder) as m:``) around reads so file handles are shared.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files = modelio.weight_files(self.folder)  # refuses pickle-only folders
        self.tensors: dict[str, TensorInfo] = {}
        for path in self.files:
            for name, info in inspect_file(path).items():
                if name in self.tensors:
                    raise modelio.ModelFormatError(
                        f"{self.folder}: tensor {name} appears in two shards "
                        f"({self.tensors[name].file.name}, {path.name})"
                    )
                self.tensors[name] = info
        self._check_index()
        self._stack: contextlib.ExitStack | None = None
        self._handles: dict[Path, object] = {}
        self._fds: dict[Path, int] = {}
        self._unmappable: set[Path] = set()  # files whose mapping failed (some FUSE mounts): read with pread

    def _check_index(self) -> None:
        """Each tensor the index names is in the shard it names (else loaders fail later, less clearly)."""
        index = self.folder / INDEX_NAME
        if not index.exists():
            return
        for name, file in modelio.read_index(index).items():
            info = self.tensors.get(name)
            if info is None or info.file.name != file:
                where = "in no shard" if info is None else f"in {info.file.name}"
                raise modelio.ModelFormatError(f"{index}: tensor {name} is listed in {file} but is {where}")

    def __enter__(self) -> SafetensorsModel:
        self._stack = contextlib.ExitStack()
        return self

    def __exit__(self, *exc) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._handles.clear()
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _handle(self, path: Path):
        from safetensors import safe_open

        h = self._handles.get(path)
        if h is None:
            h = safe_open(str(path), framework="pt")
            if self._stack is not None:
                h = self._stack.enter_context(h)
            self._handles[path] = h
        return h

    def rows(
        self, name: str, start: int | None, stop: int | None, buffer: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """Rows ``[start, stop)`` of ``name`` (the whole tensor when both are None) as its bits
        (:attr:`~finmerge.models.dtypes.DType.bits`): mapped (:meth:`view`); from a file that cannot be mapped,
        read with ``pread`` into ``buffer()`` (a reusable bits array of the rows' shape), after one refused try
        per file."""
        info = self.tensors[name]
        if info.file not in self._unmappable:
            try:
                return self.view(name, start, stop)
            except OSError:
                self._unmappable.add(info.file)
        return self.read_into(name, start, stop, buffer())

    def _span(self, name: str, start: int | None, stop: int | None) -> tuple[tuple[int, ...], int]:
        """(shape, absolute byte offset) of rows ``[start, stop)`` of ``name``, or of all of it."""
        info = self.tensors[name]
        if info.dt is None:
            raise modelio.ModelFormatError(f"{info.file}: tensor {name}: unsupported dtype {info.dtype}")
        if start is None and stop is None:
            return info.shape, info.offset
        if not info.shape:
            raise ValueError(f"{name}: cannot slice rows of a 0-d tensor")
        row = math.prod(info.shape[1:])
        return (stop - start, *info.shape[1:]), info.offset + start * row * info.dt.itemsize

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def read_into(self, name: str, start: int | None, stop: int | None, out: np.ndarray) -> np.ndarray:
        """Rows ``[start, stop)`` of ``name`` read with ``pread`` straight into ``out`` (a reusable array of the
        rows' shape and size): for files that cannot be mapped (:meth:`rows`)."""
        info = self.tensors[name]
        _, pos = self._span(name, start, stop)
        view = memoryview(out.reshape(-1).view(np.uint8))
        fd, done = self._fd(info.file), 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], pos + done)
            if n <= 0:
                raise modelio.ModelFormatError(f"{info.file}: truncated data for tensor {name}")
            done += n
        return out

    def view(self, name: str, start: int | None, stop: int | None) -> np.ndarray:
        """Rows ``[start, stop)`` of ``name`` (all of it when both are None) mapped from the page cache, as its
        bits: no copy, no buffer of ours.

        Copying 2.24 GB out of the page cache with ``pread`` took 0.44 s of CPU, mapping it 0.14 s
        (``bench/merge.py``'s 0.37B inputs), and a whole-tensor method then holds no copy of its tensors.
        The mapping is private and writable (a write would stay in this process; nothing writes), lives as
        long as the array does, and on Linux ≥ 5.14 its pages are mapped in one call
        (``MADV_POPULATE_READ``) rather than faulted in one by one. A file truncated in place while mapped
        ends the process with SIGBUS (nothing is committed then: the output is written to temporary names)."""
        info = self.tensors[name]
        shape, begin = self._span(name, start, stop)
        n = math.prod(shape)
        if n == 0:
            return np.empty(shape, dtype=info.dt.bits)
        base = begin - begin % mmap.ALLOCATIONGRANULARITY
        mm = mmap.mmap(
            self._fd(info.file),
            begin + n * info.dt.itemsize - base,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=base,
        )
        with contextlib.suppress(OSError, ValueError):  # Linux < 5.14: the pages fault in as they are read
            mm.madvise(_MADV_POPULATE_READ)
        return np.frombuffer(mm, dtype=info.dt.bits, count=n, offset=begin - base).reshape(shape)

    def read(self, name: str, start: int | None = None, stop: int | None = None):
        """Rows ``[start, stop)`` of tensor ``name`` (the whole tensor when both are None) as a torch tensor in
        its own dtype, through the safetensors library (which imports torch)."""
        info = self.tensors[name]
        h = self._handle(info.file)
        if start is None and stop is None:
            return h.get_tensor(name)
        if not info.shape:
            raise ValueError(f"{name}: cannot slice rows of a 0-d tensor")
        return h.get_slice(name)[start:stop].contiguous()


def row_blocks(
    shape: tuple[int, ...], target_elems: int, start: int = 0, stop: int | None = None
) -> Iterator:
    """``(a, b)`` row ranges over ``[start, stop)`` of axis 0 holding about ``target_elems`` elements each.

    A 0-d tensor yields a single ``(None, None)`` (read it whole)."""
    if not shape:
        yield None, None
        return
    stop = shape[0] if stop is None else stop
    row = max(1, math.prod(shape[1:]))
    step = max(1, target_elems // row)
    for a in range(start, stop, step):
        yield a, min(stop, a + step)

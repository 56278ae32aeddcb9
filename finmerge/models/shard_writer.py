"""The sharded safetensors writer: a model's tensors streamed into HF-layout shards, hashed as they go."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finmerge.models import dtypes
from finmerge.models.direct_file import DirectFile
from finmerge.models.safetensors_stream import INDEX_NAME, SINGLE_NAME, natural_key


@dataclass
class _Shard:
    file: str
    names: list[str] = field(default_factory=list)
    nbytes: int = 0


class ShardedWriter:
    """Writes tensors to HF-layout safetensors shards without buffering them.

    ``specs`` is ``[(name, dtype, shape), ...]`` (a :class:`~finmerge.models.dtypes.DType` or torch's dtype).
    Shards are packed greedily (in natural name order) up to
    ``max_shard_bytes`` of tensor data; a tensor larger than that gets a shard of its own. Feed data with
    :meth:`write` in the order given by :attr:`order` (row blocks of the current tensor, in order), then call
    :meth:`close`, which returns ``{file: sha256}`` and writes the index when there is more than one shard.

    With ``background=True`` file writes and hashing run in two worker threads (one each: sha256 and a write
    into the page cache cost about the same, so each alone bounds the pass), overlapping the caller's compute;
    at most one write is in flight, so a block passed to :meth:`write` must stay unmodified only until the
    next :meth:`write` (or :meth:`close`) returns: two alternating buffers are enough.

    With ``direct`` (the default) shards go around the page cache where the file system allows it
    (:class:`~finmerge.models.direct_file.DirectFile`).
    """

    def __init__(
        self,
        folder: str | Path,
        specs: list[tuple[str, object, tuple[int, ...]]],
        max_shard_bytes: int,
        background: bool = False,
        direct: bool = True,
    ):
        self.folder = Path(folder)
        self.direct = direct
        self.specs: dict[str, tuple[dtypes.DType, tuple[int, ...]]] = {}
        for name, dtype, shape in specs:
            try:
                self.specs[name] = (dtypes.of(dtype), tuple(shape))
            except ValueError:
                raise ValueError(f"{name}: dtype {dtype} cannot be written to safetensors") from None
        if len(self.specs) != len(specs):
            raise ValueError("duplicate tensor names")
        shards: list[_Shard] = []
        for name in sorted(self.specs, key=natural_key):
            nb = dtypes.nbytes(*self.specs[name])
            if not shards or (shards[-1].names and shards[-1].nbytes + nb > max_shard_bytes):
                shards.append(_Shard(file=""))
            shards[-1].names.append(name)
            shards[-1].nbytes += nb
        n = len(shards)
        for k, sh in enumerate(shards, 1):
            sh.file = SINGLE_NAME if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors"
            # Within a shard, widest dtypes first so every tensor's data stays aligned to its element size.
            sh.names.sort(key=lambda nm: (-self.specs[nm][0].itemsize, natural_key(nm)))
        self.shards = shards
        self.order = [nm for sh in shards for nm in sh.names]
        self.sha256: dict[str, str] = {}
        self._pools = (
            [cf.ThreadPoolExecutor(1, thread_name_prefix=f"safetensors-{what}") for what in ("write", "hash")]
            if background
            else []
        )
        self._pending: list[cf.Future] = []
        self._shard_i = -1
        self._name_i = -1
        self._fh = None  # owned by the I/O side (_file_*), which may run in a worker thread
        self._hash = None
        self._left = 0  # bytes still expected for the current tensor
        self._next_tensor()

    # -- I/O side: the file half and the hash half of each step run inline, or each in its worker thread,
    # strictly in submission order ----------------------------------------------------------------------
    def _file_open(self, file: str, header: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fh = DirectFile(self.folder / f".{file}.tmp", direct=self.direct)
        self._fh.write(header)

    def _hash_open(self, file: str, header: bytes) -> None:
        self._hash = hashlib.sha256(header)

    def _file_write(self, data, keepalive=None) -> None:
        self._fh.write(data)

    def _hash_write(self, data, keepalive=None) -> None:
        self._hash.update(data)

    def _file_close(self, file: str) -> None:
        self._fh.close()
        self._fh = None
        os.replace(self.folder / f".{file}.tmp", self.folder / file)

    def _hash_close(self, file: str) -> None:
        self.sha256[file] = self._hash.hexdigest()

    def _do(self, step: str, *args) -> None:
        halves = (getattr(self, f"_file_{step}"), getattr(self, f"_hash_{step}"))
        if not self._pools:
            for fn in halves:
                fn(*args)
            return
        self._wait()
        self._pending = [pool.submit(fn, *args) for pool, fn in zip(self._pools, halves, strict=True)]

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()  # re-raises a write error here

    # -- planning side ---------------------------------------------------------------------------------
    def _open_shard(self, sh: _Shard) -> None:
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for nm in sh.names:
            dtype, shape = self.specs[nm]
            nb = dtypes.nbytes(dtype, shape)
            header[nm] = {"dtype": dtype.st, "shape": list(shape), "data_offsets": [off, off + nb]}
            off += nb
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._do("open", sh.file, struct.pack("<Q", len(raw)) + raw)

    def _next_tensor(self) -> None:
        while True:
            if self._shard_i >= 0 and self._name_i + 1 < len(self.shards[self._shard_i].names):
                self._name_i += 1
            else:
                if self._shard_i >= 0:
                    self._do("close", self.shards[self._shard_i].file)
                self._shard_i += 1
                self._name_i = 0
                if self._shard_i >= len(self.shards):
                    self._left = 0
                    return
                self._open_shard(self.shards[self._shard_i])
            self._left = dtypes.nbytes(*self.specs[self.current])
            if self._left:
                return

    @property
    def current(self) -> str | None:
        if self._shard_i >= len(self.shards):
            return None
        return self.shards[self._shard_i].names[self._name_i]

    # -- API -------------------------------------------------------------------------------------------
    def write(self, name: str, block) -> None:
        """Append the next row block of tensor ``name`` (must be the current tensor): a torch tensor in its
        planned dtype, or a numpy array of its bits (:attr:`~finmerge.models.dtypes.DType.bits`)."""
        if block.size == 0 if isinstance(block, np.ndarray) else block.numel() == 0:
            if name in self.specs:
                return  # zero-size tensors are all header
        if name != self.current:
            raise RuntimeError(f"writer expected tensor {self.current!r}, got {name!r}")
        dtype, _ = self.specs[name]
        if isinstance(block, np.ndarray):
            if block.dtype.itemsize != dtype.itemsize:
                raise RuntimeError(f"{name}: block of {block.dtype} bits, planned {dtype}")
            flat = np.ascontiguousarray(block).reshape(-1)
        else:
            if dtypes.of(block.dtype) != dtype:
                raise RuntimeError(f"{name}: block dtype {block.dtype}, planned {dtype}")
            flat = dtypes.to_bits(block.detach().to("cpu").contiguous().reshape(-1))
        data = memoryview(flat.view(np.uint8))
        if data.nbytes > self._left:
            raise RuntimeError(f"{name}: more data than its shape {self.specs[name][1]}")
        self._do("write", data, flat)
        self._left -= data.nbytes
        if self._left == 0:
            self._next_tensor()

    def close(self) -> dict[str, str]:
        """Finish the last shard, write the index (several shards); returns ``{shard file: sha256}``."""
        if self.current is not None:
            raise RuntimeError(f"writer closed before tensor {self.current!r} was complete")
        self._wait()
        self._shutdown()
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(sh.nbytes for sh in self.shards)},
                "weight_map": {nm: sh.file for sh in self.shards for nm in sorted(sh.names, key=natural_key)},
            }
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return dict(self.sha256)

    def abort(self) -> None:
        """Release the file and the worker after an error (a no-op after :meth:`close`)."""
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - the caller is already handling the first error
            pass
        self._shutdown()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _shutdown(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True)
        self._pools = []

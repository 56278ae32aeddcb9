"""Fingerprints of a stage's inputs: what enters its cache key for a folder, a file or a list of sources."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from finmerge.core import storage

# How an input enters the cache key: a model or finmerge folder by its fingerprint (the manifest digest when
# finmerge wrote it), a tokenizer by its files, a file by its bytes, a list of sources by their listing
# (path, size, mtime/ETag), a "uri" (a location the caller fingerprints in another input) and a value as
# themselves. Every kind but "value" names a location: the output may not be, contain or lie inside it.
InputKind = Literal["model", "tokenizer", "file", "files", "uri", "value"]


def sources_fingerprint(sources: list[str]) -> str:
    """Identity of raw inputs: every matched file's path, size and mtime/ETag."""
    h = hashlib.sha256()
    for src in sources:
        fs, path = storage.filesystem(src)
        paths = fs.find(path) if fs.isdir(path) else fs.glob(path)
        for p in sorted(paths):
            info = fs.info(p)
            h.update(f"{p}\t{info.get('size')}\t{info.get('ETag') or info.get('mtime', '')}\n".encode())
    return h.hexdigest()


def file_digest(uri: str | None) -> str | None:
    return storage.sha256_bytes(storage.read_bytes(uri)) if uri and storage.exists(uri) else None


def parts_digest(uri: str, prefixes: tuple[str, ...]) -> str | None:
    """The files under ``prefixes`` of a folder finmerge wrote (None without a manifest), marked as a part."""
    digest = storage.manifest_parts_digest(uri, prefixes)
    return None if digest is None else "parts:" + digest


def input_digest(kind: InputKind, value: Any, parts: tuple[str, ...] = ()) -> Any:
    if value is None:
        return None
    if parts and kind == "model" and (digest := parts_digest(value, parts)) is not None:
        return digest
    if kind == "model":
        from finmerge.models.loading import fingerprint

        return fingerprint(value)
    if kind == "tokenizer":
        from finmerge.models.loading import tokenizer_fingerprint

        return tokenizer_fingerprint(value)
    if kind == "file":
        return file_digest(value)
    if kind == "files":
        return sources_fingerprint(list(value))
    return value

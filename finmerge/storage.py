"""Every path is an fsspec URL: a local folder and ``s3://bucket/prefix`` both work.

Folders that stages produce are written atomically: the work happens in a local temp folder, and the
result is committed by a rename (local) or a verified upload (remote) followed by ``_manifest.json``,
written last. A folder without a manifest is incomplete and is never read as an input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

MANIFEST = "_manifest.json"
_ENDPOINT: str | None = None


class StorageError(RuntimeError):
    pass


def configure(endpoint_url: str | None = None) -> None:
    """Set the S3 endpoint for this process (config storage.endpoint_url, else the AWS_* variables)."""
    global _ENDPOINT
    _ENDPOINT = endpoint_url


def endpoint_url() -> str | None:
    return _ENDPOINT or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def local_path(uri: str) -> Path:
    uri = str(uri)
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser().resolve()


def normalize(uri: str) -> str:
    """Absolute local paths and untouched remote URLs, so that keys and tags do not depend on the cwd."""
    return str(uri).rstrip("/") if is_remote(uri) else str(local_path(uri))


def join(base: str, *parts: str) -> str:
    out = str(base).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def storage_options(uri: str) -> dict[str, Any]:
    # Credentials come from the standard AWS chain (env, profile); only the endpoint is set here.
    if str(uri).startswith(("s3://", "s3a://")):
        ep = endpoint_url()
        return {"client_kwargs": {"endpoint_url": ep}} if ep else {}
    return {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    if not is_remote(uri):
        return fsspec.filesystem("file"), str(local_path(uri))
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
    return fs, path


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise StorageError(f"{uri}: not found") from exc


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as exc:
        raise StorageError(f"{uri}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc


def iter_jsonl(uri: str | Path, require: str | None = None) -> Iterator[dict]:
    """Stream JSON objects from a JSONL file at any URI; errors name the file and the line.

    ``require``: a field that must hold a string in every record (e.g. ``"text"``).
    """
    fs, path = filesystem(str(uri))
    with fs.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{uri}: line {lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise ValueError(f"{uri}: line {lineno}: expected a JSON object")
            if require is not None and not isinstance(rec.get(require), str):
                raise ValueError(f"{uri}: line {lineno}: no string field {require!r}")
            yield rec


def write_bytes(uri: str, data: bytes) -> None:
    """Atomic single-file write: temp + rename locally; one PUT (atomic per object) on S3."""
    if is_remote(uri):
        fs, path = filesystem(uri)
        with fs.open(path, "wb") as fh:
            fh.write(data)
        return
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def remove(uri: str) -> None:
    """Delete one file if it exists."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm_file(path)


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True).encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_digest(files: dict[str, dict]) -> str:
    """Content digest of a folder: its relative paths and their sha256, order-free."""
    lines = "\n".join(f"{name}\t{files[name]['sha256']}" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def describe_folder(local_dir: Path, known: dict[str, str] | None = None) -> dict[str, dict]:
    """sha256 and size of every file; ``known`` hashes (computed by the writer from the very bytes it wrote,
    e.g. merge shards) are taken as they are instead of reading the file again."""
    files = {}
    for p in sorted(local_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(local_dir).as_posix()
            files[rel] = {"sha256": (known or {}).get(rel) or sha256_file(p), "size": p.stat().st_size}
    return files


def read_manifest(uri: str) -> dict | None:
    """The folder's manifest, or None if the folder is absent or incomplete."""
    m = join(uri, MANIFEST)
    try:
        return read_json(m) if exists(m) else None
    except StorageError:  # deleted between the check and the read (a concurrent prune): incomplete
        return None


def _upload_verified(local_dir: Path, uri: str, files: dict[str, dict], attempts: int = 3) -> None:
    fs, root = filesystem(uri)
    for rel, info in files.items():
        dest = f"{root}/{rel}"
        for attempt in range(1, attempts + 1):
            try:
                fs.put_file(str(local_dir / rel), dest)
                size = fs.info(dest)["size"]
                if size != info["size"]:
                    raise StorageError(f"{uri}/{rel}: uploaded {size} bytes, expected {info['size']}")
                break
            except (OSError, StorageError):
                if attempt == attempts:
                    raise
                time.sleep(2**attempt)
    fs.invalidate_cache()


class PendingFolder:
    """A folder being written: fill ``path``, add to ``meta``; ``manifest`` is set once committed."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.meta = meta
        self.manifest: dict = {}
        self.known_sha256: dict[str, str] = {}  # relative path → sha256 the writer already computed

    def result(self) -> dict:
        """The small dict a stage returns (and Prefect caches): where, content digest, and the meta."""
        return {"uri": self.manifest["uri"], "digest": self.manifest["digest"], **self.meta}


@contextlib.contextmanager
def output_folder(
    uri: str, staging_dir: str | None = None, meta: dict | None = None
) -> Iterator[PendingFolder]:
    """Yield a local temp folder; on clean exit commit it to ``uri`` with a manifest written last.

    On error nothing is committed, so ``uri`` either holds the previous complete folder or nothing usable.
    The manifest carries ``digest`` (content hash of the files) and ``meta`` (what the stage records).
    """
    if is_remote(uri):
        parent = Path(staging_dir or tempfile.gettempdir()).expanduser() / "outputs"
    else:
        parent = local_path(uri).parent
    parent.mkdir(parents=True, exist_ok=True)
    pending = PendingFolder(Path(tempfile.mkdtemp(prefix=".partial-", dir=parent)), dict(meta or {}))
    tmp = pending.path
    try:
        yield pending
        files = describe_folder(tmp, pending.known_sha256)
        manifest = {
            "uri": normalize(uri),
            "files": files,
            "digest": folder_digest(files),
            "meta": pending.meta,
        }
        if is_remote(uri):
            fs, root = filesystem(uri)
            if fs.exists(f"{root}/{MANIFEST}"):
                fs.rm_file(f"{root}/{MANIFEST}")  # mark incomplete while we overwrite
            _upload_verified(tmp, uri, files)
            write_json(join(uri, MANIFEST), manifest)
        else:
            (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True))
            target = local_path(uri)
            if target.exists():
                old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        pending.manifest = manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish_staged(tmp: Path, dest: Path) -> None:
    """Move a verified download into place. Several processes (the ranks of one training job) may stage
    the same folder at once: whoever finishes second keeps the first copy and drops its own."""
    if (dest / MANIFEST).exists():
        return
    if dest.exists():
        shutil.rmtree(dest, ignore_errors=True)  # a stale copy without its manifest
    try:
        os.replace(tmp, dest)
    except OSError:
        if not (dest / MANIFEST).exists():
            raise


def stage_folder(uri: str, staging_dir: str) -> Path:
    """A local, verified copy of a complete folder (the folder itself when it is already local)."""
    manifest = read_manifest(uri)
    if manifest is None:
        raise StorageError(f"{uri}: missing {MANIFEST}; the folder is incomplete or not a finmerge output")
    if not is_remote(uri):
        return local_path(uri)
    dest = Path(staging_dir).expanduser().resolve() / "inputs" / manifest["digest"][:32]
    done = dest / MANIFEST
    if done.exists():
        return dest
    fs, root = filesystem(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest.parent))
    try:
        for rel, info in manifest["files"].items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{rel}", str(tmp / rel))
            got = sha256_file(tmp / rel)
            if got != info["sha256"]:
                raise StorageError(
                    f"{uri}/{rel}: sha256 {got[:12]} does not match manifest {info['sha256'][:12]}"
                )
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True))
        _publish_staged(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


DOCS = "docs.jsonl"


def docs_input(uri: str, staging_dir: str) -> Path:
    """Local path of a JSONL document file given as a ``.jsonl`` file URI or a folder holding ``docs.jsonl``.

    A finmerge output folder (with ``_manifest.json``) is staged and verified; a plain folder or file (a user's
    own JSONL) is read as it is, downloaded to the staging area when remote.
    """
    if uri.endswith((".jsonl", ".jsonl.gz")) and not (exists(join(uri, MANIFEST))):
        if not exists(uri):
            raise StorageError(f"{uri}: no such file")
        if not is_remote(uri):
            return local_path(uri)
        data = read_bytes(uri)
        dest = Path(staging_dir).expanduser().resolve() / "inputs" / sha256_bytes(data)[:32] / Path(uri).name
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".partial")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        return dest
    if read_manifest(uri) is not None:
        path = stage_folder(uri, staging_dir) / DOCS
        if not path.exists():
            raise StorageError(f"{uri}: complete folder but no {DOCS} in it")
        return path
    if exists(join(uri, DOCS)):
        return docs_input(join(uri, DOCS), staging_dir)
    raise StorageError(f"{uri}: neither a .jsonl file nor a folder with {DOCS}")

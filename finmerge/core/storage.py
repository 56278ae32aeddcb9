"""Every path is an fsspec URL: a local folder and ``s3://bucket/prefix`` both work.

Folders that stages produce are written atomically: the work happens in a local temp folder, and the
result is committed by a rename (local) or a verified upload (remote) followed by ``_manifest.json``,
written last. A folder without a manifest is incomplete and is never read as an input. Writing and
committing a stage's output folder, and refusing to replace what finmerge did not write, is
:mod:`finmerge.core.outputs` (its names are reachable from here too: ``storage.output_folder``).

Remote operations of a commit (each upload, its size check, the manifest) are retried with backoff under
:data:`UPLOAD_RETRY` (or the policy given to :func:`configure`), so an S3 endpoint that is down for a while
(restart, network blip) does not fail the stage; past the policy's budget the error names the object, the
attempts and the budget. A full local disk (the staging area) is reported with the path and the free space.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from finmerge.core import redact
from finmerge.core.retry import Backoff, retry_call

# botocore logs the access key id and session token of every request at DEBUG: mask them process-wide.
redact.install()

MANIFEST = "_manifest.json"
# Written first and removed last by a remote commit: a prefix holding it but no manifest is a finmerge
# output whose upload was interrupted (S3 has no rename), which the next commit of the same stage may replace.
WRITING = "_writing.json"
# Stock MLflow writes this beside a registered local-path model when it loads it (which version it is): not
# finmerge's, never a model file, and no reason to refuse or distrust the folder.
MLFLOW_LOAD_META = "registered_model_meta"
log = logging.getLogger(__name__)


# How long a remote operation is retried: the one backoff rule (attempts, doubling delay, time budget).
RetryPolicy = Backoff

# Outlasts an endpoint restart (tens of seconds) on top of botocore's own few quick retries.
UPLOAD_RETRY = RetryPolicy()
_ENDPOINT: str | None = None
_RETRY: RetryPolicy = UPLOAD_RETRY


class StorageError(RuntimeError):
    pass


class NoSpaceError(StorageError):
    """The local disk (staging area or output parent) filled up while writing a folder."""


def configure(endpoint_url: str | None = None, retry: RetryPolicy | None = None) -> None:
    """Set the S3 endpoint for this process (config storage.endpoint_url, else the AWS_* variables) and
    the retry policy of remote commits (:data:`UPLOAD_RETRY` when None)."""
    global _ENDPOINT, _RETRY
    _ENDPOINT = endpoint_url
    _RETRY = retry or UPLOAD_RETRY


def configure_from(cfg) -> None:
    """:func:`configure` from the config's ``storage`` section (endpoint and retry budget)."""
    configure(
        cfg.endpoint_url,
        dataclasses.replace(UPLOAD_RETRY, attempts=cfg.retry_attempts, budget_s=cfg.retry_budget_s),
    )


def retry_policy() -> RetryPolicy:
    return _RETRY


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
    with fs.open(path, "rb") as fh:  # bytes, so a bad byte is reported with its line, not mid-buffer
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{uri}: line {lineno}: invalid UTF-8 at byte {exc.start}") from exc
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


def manifest_parts_digest(uri: str, prefixes: tuple[str, ...]) -> str | None:
    """Content identity of the files under ``prefixes`` in a folder finmerge wrote (from its manifest's
    per-file sha256), or None for a folder without a manifest."""
    manifest = read_manifest(uri)
    if manifest is None:
        return None
    picked = {f: e["sha256"] for f, e in sorted(manifest["files"].items()) if f.startswith(prefixes)}
    blob = json.dumps([list(prefixes), picked], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def result_of(out_uri: str) -> dict | None:
    """A stage's return value rebuilt from a complete output folder (None if absent or incomplete)."""
    manifest = read_manifest(out_uri)
    return (
        None
        if manifest is None
        else {"uri": manifest["uri"], "digest": manifest["digest"], **manifest["meta"]}
    )


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors worth retrying: I/O and connection failures (botocore's are not OSErrors), bad sizes."""
    errors: tuple[type[BaseException], ...] = (OSError, StorageError, TimeoutError)
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError

        errors += (BotoCoreError,)
    with contextlib.suppress(ImportError):
        from aiohttp import ClientError

        errors += (ClientError,)
    return errors


def with_retries(what: str, op, policy: RetryPolicy | None = None, fs=None):
    """``op()``, retried on transient errors under ``policy``; past its budget a :class:`StorageError`
    that names ``what``, the attempts, the time spent and the last error."""
    policy = policy or _RETRY

    def give_up(exc: BaseException, failures: int, spent: float) -> StorageError:
        return StorageError(
            f"{what}: failed after {failures} attempts over {spent:.0f}s (retry budget "
            f"{policy.budget_s:.0f}s, {policy.attempts} attempts): {type(exc).__name__}: {exc}"
        )

    def pause(seconds: float) -> None:
        time.sleep(seconds)
        if fs is not None:
            fs.invalidate_cache()  # s3fs may have cached a listing from before the failure

    return retry_call(op, policy, what=what, transient=_transient_errors(), give_up=give_up, sleep=pause)


def disk_full(exc: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain; safetensors reports it as a plain message ("os error 28")."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def no_space_error(tmp: Path, target: str, exc: BaseException) -> NoSpaceError:
    written = _bytes_under(tmp)
    free = shutil.disk_usage(tmp.parent).free if tmp.parent.exists() else 0
    return NoSpaceError(
        f"{tmp.parent}: No space left on device while writing {target}: it needs more than the {written} "
        f"bytes written to {tmp.name} before the disk filled ({free} bytes free now). Free space or point "
        "storage.staging_dir at a larger disk; nothing was committed."
    )


def _publish_staged(tmp: Path, dest: Path) -> None:
    """Move a verified download into place. Several processes (the ranks of one training job) may stage
    the same folder at once: whoever finishes second keeps the first copy and drops its own. The check,
    the removal of a stale copy and the rename happen under one file lock, so no caller can delete a
    complete copy another has just published and is reading."""
    import fcntl

    with open(dest.parent / f".{dest.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / MANIFEST).exists():
            return
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)  # a stale copy without its manifest
        os.replace(tmp, dest)


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
        honour_umask(tmp)
        _publish_staged(tmp, dest)
    except Exception as exc:
        if disk_full(exc):
            raise no_space_error(tmp, f"the staged copy of {uri}", exc) from exc
        raise
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


def _umask() -> int:
    """The process umask, read without changing it (Linux); falls back to set-and-restore."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(folder: Path) -> None:
    """mkdtemp makes 0700 folders; a committed output gets the mode a plain mkdir would have given it."""
    mode = 0o777 & ~_umask()
    for d in (folder, *(p for p in folder.rglob("*") if p.is_dir())):
        with contextlib.suppress(OSError):
            if d.stat().st_mode & 0o777 == 0o700:
                d.chmod(mode)


# The write side lives in finmerge.core.outputs (which imports this module); its names stay reachable here.
_OUTPUT_NAMES = frozenset({"OutputRefused", "PendingFolder", "check_output", "output_folder", "stage_of"})


def __getattr__(name: str):
    if name in _OUTPUT_NAMES:
        from finmerge.core import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

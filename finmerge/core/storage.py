"""Every path is an fsspec URL: a local folder and ``s3://bucket/prefix`` both work.

Folders that stages produce are written atomically: the work happens in a local temp folder, and the
result is committed by a rename (local) or a verified upload (remote) followed by ``_manifest.json``,
written last. A folder without a manifest is incomplete and is never read as an input.

Remote operations of a commit (each upload, its size check, the manifest) are retried with backoff under
:data:`UPLOAD_RETRY` (or the policy given to :func:`configure`), so an S3 endpoint that is down for a while
(restart, network blip) does not fail the stage; past the policy's budget the error names the object, the
attempts and the budget. A full local disk (the staging area) is reported with the path and the free space.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
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

# botocore logs the access key id and session token of every request at DEBUG: mask them process-wide.
redact.install()

MANIFEST = "_manifest.json"
# Written first and removed last by a remote commit: a prefix holding it but no manifest is a finmerge
# output whose upload was interrupted (S3 has no rename), which the next commit of the same stage may replace.
WRITING = "_writing.json"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How long a remote operation is retried: ``attempts`` at most, sleeping ``first_delay_s`` doubled
    after each failure up to ``max_delay_s``, and never past ``budget_s`` since the first failure."""

    attempts: int = 30
    first_delay_s: float = 1.0
    max_delay_s: float = 8.0
    budget_s: float = 120.0

    def delay(self, failures: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2 ** max(0, failures - 1))


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
    transient = _transient_errors()
    failures, first_failure = 0, None
    while True:
        try:
            return op()
        except transient as exc:
            failures += 1
            now = time.monotonic()
            first_failure = first_failure or now
            pause = policy.delay(failures)
            spent = now - first_failure
            if failures >= policy.attempts or spent + pause > policy.budget_s:
                raise StorageError(
                    f"{what}: failed after {failures} attempts over {spent:.0f}s (retry budget "
                    f"{policy.budget_s:.0f}s, {policy.attempts} attempts): {type(exc).__name__}: {exc}"
                ) from exc
            log.warning("%s: %s: %s; retry %d in %.1fs", what, type(exc).__name__, exc, failures, pause)
            time.sleep(pause)
            if fs is not None:
                fs.invalidate_cache()  # s3fs may have cached a listing from before the failure


def _put_verified(fs, src: Path, dest: str, uri: str, size: int) -> None:
    fs.put_file(str(src), dest)
    fs.invalidate_cache(dest)
    got = fs.info(dest)["size"]
    if got != size:
        raise StorageError(f"{uri}: uploaded {got} bytes, expected {size}")


def _upload_verified(local_dir: Path, uri: str, files: dict[str, dict]) -> None:
    fs, root = filesystem(uri)
    for rel, info in files.items():
        target = join(uri, rel)
        put = functools.partial(_put_verified, fs, local_dir / rel, f"{root}/{rel}", target, info["size"])
        with_retries(f"upload {target}", put, fs=fs)
    fs.invalidate_cache()


def _mark_incomplete(uri: str) -> None:
    """Drop the manifest of a folder about to be overwritten, so no reader trusts it half-way."""
    fs, root = filesystem(uri)
    fs.invalidate_cache(root)
    if fs.exists(f"{root}/{MANIFEST}"):
        fs.rm_file(f"{root}/{MANIFEST}")


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


def _no_space(tmp: Path, target: str, exc: BaseException) -> NoSpaceError:
    written = _bytes_under(tmp)
    free = shutil.disk_usage(tmp.parent).free if tmp.parent.exists() else 0
    return NoSpaceError(
        f"{tmp.parent}: No space left on device while writing {target}: it needs more than the {written} "
        f"bytes written to {tmp.name} before the disk filled ({free} bytes free now). Free space or point "
        "storage.staging_dir at a larger disk; nothing was committed."
    )


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
    uri: str,
    staging_dir: str | None = None,
    meta: dict | None = None,
    *,
    stage: str = "folder",
    inputs: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
) -> Iterator[PendingFolder]:
    """Yield a local temp folder; on clean exit commit it to ``uri`` with a manifest written last.

    ``uri`` is checked (:func:`check_output`) before the folder is yielded and again just before the
    commit, so nothing finmerge did not write is ever replaced. On error nothing is committed, so ``uri``
    keeps what it held. A replaced finmerge output stays in place until the new one is committed.
    The manifest carries ``stage``, ``digest`` (content hash of the files) and ``meta``.
    """
    check_output(uri, stage, inputs, overwrite)
    if is_remote(uri):
        parent = Path(staging_dir or tempfile.gettempdir()).expanduser() / "outputs"
    else:
        parent = local_path(uri).parent
    parent.mkdir(parents=True, exist_ok=True)
    pending = PendingFolder(Path(tempfile.mkdtemp(prefix=".partial-", dir=parent)), dict(meta or {}))
    tmp = pending.path
    try:
        yield pending
        check_output(uri, stage, inputs, overwrite)  # something may have appeared there meanwhile
        pending.manifest = _commit(tmp, uri, pending, stage)
    except Exception as exc:
        if disk_full(exc) and not isinstance(exc, NoSpaceError):
            raise _no_space(tmp, uri, exc) from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _commit(tmp: Path, uri: str, pending: PendingFolder, stage: str) -> dict:
    """Publish the filled temp folder at ``uri``, manifest last; returns the manifest."""
    files = describe_folder(tmp, pending.known_sha256)
    manifest = {
        "uri": normalize(uri),
        "stage": stage,
        "files": files,
        "digest": folder_digest(files),
        "meta": pending.meta,
    }
    if is_remote(uri):
        return _commit_remote(tmp, uri, files, manifest)
    (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True))
    _honour_umask(tmp)
    target = local_path(uri)
    if target.exists() or target.is_symlink():
        # The old output (checked above: ours, or --overwrite) is moved aside, not deleted, until the new
        # one is in place; a crash between the two renames leaves it beside the target under .old-*.
        old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex}")
        os.replace(target, old)
        os.replace(tmp, target)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, target)
    return manifest


def _commit_remote(tmp: Path, uri: str, files: dict[str, dict], manifest: dict) -> dict:
    """Upload, verify, manifest last. Objects already under the prefix (checked: a finmerge output, or
    --overwrite) are first copied aside server-side and removed only after the new manifest is written;
    if the upload fails they are restored."""
    fs, root = filesystem(uri)
    fs.invalidate_cache(root)
    existing = [p[len(root) :].lstrip("/") for p in fs.find(root)]
    marker_uri = join(uri, WRITING)
    marker = {"stage": manifest["stage"], "files": sorted({*existing, *files, MANIFEST} - {WRITING})}
    with_retries(f"upload {marker_uri}", lambda: write_json(marker_uri, marker))
    existing = [rel for rel in existing if rel != WRITING]
    backup = None
    if existing:
        parent, _, name = root.rstrip("/").rpartition("/")
        backup = f"{parent}/.old-{name}-{uuid.uuid4().hex}"
        for rel in existing:
            with_retries(f"back up {uri}/{rel}", lambda rel=rel: fs.copy(f"{root}/{rel}", f"{backup}/{rel}"))
        with_retries(f"mark {uri} incomplete", lambda: _mark_incomplete(uri))
    try:
        _upload_verified(tmp, uri, files)
        manifest_uri = join(uri, MANIFEST)
        with_retries(f"upload {manifest_uri}", lambda: write_json(manifest_uri, manifest))
    except BaseException:
        if backup is not None:
            _restore_remote(fs, root, backup, existing, [r for r in files if r not in existing], uri)
        raise
    if backup is not None:
        stale = [rel for rel in existing if rel != MANIFEST and rel not in files]
        for rel in stale:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{root}/{rel}")
        with contextlib.suppress(Exception):
            fs.rm(backup, recursive=True)
    with contextlib.suppress(Exception):  # a leftover marker beside a manifest is harmless
        remove(marker_uri)
    fs.invalidate_cache()
    return manifest


def _restore_remote(fs, root: str, backup: str, existing: list[str], added: list[str], uri: str) -> None:
    """Put the previous objects back after a failed commit (manifest last) and drop the new ones; if that
    fails too, say where the copy is rather than lose it."""
    try:
        fs.invalidate_cache()
        for rel in added:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{root}/{rel}")
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(f"{root}/{WRITING}")
        for rel in existing:
            if rel != MANIFEST:
                fs.copy(f"{backup}/{rel}", f"{root}/{rel}")
        if MANIFEST in existing:
            fs.copy(f"{backup}/{MANIFEST}", f"{root}/{MANIFEST}")
        fs.rm(backup, recursive=True)
    except Exception as exc:  # the endpoint is still down: the copy stays where it is
        log.error("%s: the previous contents could not be restored (%s); they are kept under s3://%s",
                  uri, exc, backup)  # fmt: skip
    finally:
        fs.invalidate_cache()


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
        _honour_umask(tmp)
        _publish_staged(tmp, dest)
    except Exception as exc:
        if disk_full(exc):
            raise _no_space(tmp, f"the staged copy of {uri}", exc) from exc
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


# --- Output protection ------------------------------------------------------------------------------------
# finmerge only ever replaces what finmerge wrote. A stage's target must be absent, empty, or a complete
# finmerge output of the same stage holding nothing but its own files; anything else is refused before any
# work. ``overwrite=True`` (the CLI's --overwrite) lifts only that last rule: a target that is, contains or
# lies inside an input, or that is (or contains) the working directory, the home directory or a
# filesystem / bucket root, is refused whatever the flag says.


class OutputRefused(StorageError):
    """The output location holds something finmerge will not replace (a user mistake, not a fault)."""


def _glob_root(uri: str) -> str:
    """The part of a (possibly globbed) URI before its first wildcard, as a folder or file URI."""
    s = str(uri)
    cut = min((i for i in (s.find("*"), s.find("?"), s.find("[")) if i >= 0), default=-1)
    if cut < 0:
        return s
    head = s[:cut]
    return head.rsplit("/", 1)[0] if "/" in head else "."


def _location(uri: str) -> tuple[str, tuple[str, ...]]:
    """(scheme-and-bucket, path parts) for comparing locations: ``/a/b`` → ("file", ("a", "b"))."""
    if is_remote(uri):
        scheme, _, rest = str(uri).partition("://")
        scheme = "s3" if scheme in ("s3", "s3a") else scheme
        bucket, _, key = rest.partition("/")
        return f"{scheme}://{bucket}", tuple(p for p in key.split("/") if p)
    return "file", local_path(uri).parts[1:]


def _contains(outer: tuple, inner: tuple) -> bool:
    return outer[0] == inner[0] and inner[1][: len(outer[1])] == outer[1]


def _forbidden_reason(uri: str, inputs: list[str]) -> str | None:
    """Why ``uri`` may never be an output, whatever --overwrite says; None when it may."""
    target = _location(uri)
    if not target[1]:
        return "it is a filesystem root" if target[0] == "file" else "it is the root of a bucket"
    if not is_remote(uri):
        for what, path in (("the current directory", Path.cwd()), ("the home directory", Path.home())):
            if _contains(target, _location(str(path))):
                return f"it is or contains {what} ({path})"
    for given in inputs:
        if not given:
            continue
        src = _location(_glob_root(given))
        if _contains(target, src) or _contains(src, target):
            rel = "is" if src == target else ("contains" if _contains(target, src) else "lies inside")
            return f"it {rel} the input {given}"
    return None


def stage_of(manifest: dict) -> str | None:
    # Manifests from before the "stage" field name the kind of some outputs in their meta.
    return manifest.get("stage") or (manifest.get("meta") or {}).get("kind")


def _describe(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:3])
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown}{', …' if len(names) > 3 else ''})"


def _occupant(uri: str, stage: str) -> str | None:
    """What at ``uri`` finmerge must not replace as a ``stage`` output; None when it may write there."""
    fs, root = filesystem(uri)
    if is_remote(uri):
        fs.invalidate_cache(root)
        names = [p[len(root) :].lstrip("/") for p in fs.find(root)]
        if not names:
            return None
    else:
        path = local_path(uri)
        if not (path.exists() or path.is_symlink()):
            return None
        if path.is_symlink() or not path.is_dir():
            return "a file that is not a folder"
        names = [p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()]
        if not names:
            return None  # an empty folder (or a tree of empty folders)
    manifest = read_manifest(uri)
    if manifest is None:
        marker = _writing_marker(uri) if is_remote(uri) else None
        if marker and marker.get("stage") == stage and set(names) <= {*marker.get("files", ()), WRITING}:
            return None  # our own upload, interrupted: the next commit of this stage replaces it
        return f"{_describe(names)} that finmerge did not write (no {MANIFEST})"
    found = stage_of(manifest)
    if found != stage:
        return f"a finmerge {found or 'unknown-stage'} output, not a {stage} output"
    foreign = [n for n in names if n not in (MANIFEST, WRITING) and n not in manifest.get("files", {})]
    if foreign:
        return f"a finmerge {stage} output plus {_describe(foreign)} that finmerge did not write"
    return None


def _writing_marker(uri: str) -> dict | None:
    try:
        marker = read_json(join(uri, WRITING))
    except StorageError:
        return None
    return marker if isinstance(marker, dict) else None


def check_output(
    uri: str, stage: str, inputs: list[str] | tuple[str, ...] = (), overwrite: bool = False
) -> None:
    """Refuse (:class:`OutputRefused`) to write a ``stage`` output at ``uri`` unless that is safe (above)."""
    reason = _forbidden_reason(uri, [str(i) for i in inputs])
    if reason:
        raise OutputRefused(f"{uri}: refusing to write the {stage} output there: {reason}")
    if overwrite:
        return
    occupant = _occupant(uri, stage)
    if occupant:
        raise OutputRefused(
            f"{uri}: refusing to write the {stage} output there: it holds {occupant}. Choose a new or empty "
            "folder, or pass --overwrite to replace it"
        )


def _umask() -> int:
    """The process umask, read without changing it (Linux); falls back to set-and-restore."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(folder: Path) -> None:
    """mkdtemp makes 0700 folders; a committed output gets the mode a plain mkdir would have given it."""
    mode = 0o777 & ~_umask()
    for d in (folder, *(p for p in folder.rglob("*") if p.is_dir())):
        with contextlib.suppress(OSError):
            if d.stat().st_mode & 0o777 == 0o700:
                d.chmod(mode)

"""A stage's output folder: written in a local temp folder, committed atomically, manifest last.

:func:`output_folder` yields the temp folder and commits it on clean exit: a rename locally, a verified
upload to S3 (each object retried under the storage retry policy) followed by ``_manifest.json``. Before any
work, and again just before the commit, :func:`check_output` refuses a target that finmerge must not
replace. Reading, staging and the retry policy are :mod:`finmerge.core.storage`, which re-exports these names.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from finmerge.core.storage import (
    MANIFEST,
    MLFLOW_LOAD_META,
    WRITING,
    NoSpaceError,
    StorageError,
    describe_folder,
    disk_full,
    filesystem,
    folder_digest,
    honour_umask,
    is_remote,
    join,
    local_path,
    no_space_error,
    normalize,
    read_json,
    read_manifest,
    remove,
    with_retries,
    write_json,
)

log = logging.getLogger(__name__)


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
            raise no_space_error(tmp, uri, exc) from exc
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
    honour_umask(tmp)
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
    foreign = [
        n
        for n in names
        if n not in (MANIFEST, WRITING, MLFLOW_LOAD_META) and n not in manifest.get("files", {})
    ]
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

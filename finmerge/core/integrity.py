"""Is this folder the one that was registered? Every file checked against the digest recorded in MLflow.

A finmerge folder carries ``_manifest.json`` (per-file sha256 and size) and registration records the
manifest's digest as the version tag ``finmerge.digest``. The manifest sits beside the weights, so whoever can
write the bucket can rewrite it too; the recorded digest lives in the registry, behind MLflow's
authentication. :func:`verify_folder` trusts the manifest only if it hashes to the recorded digest, then
hashes every file (streamed, nothing kept) against it. A swapped, truncated, missing or added file is an
:class:`IntegrityError` naming the file and both digests. Promotion, rollback and ``models:/`` loading call it
before they use a version (docs/security.md).
"""

from __future__ import annotations

import hashlib

from finmerge.core import storage

DIGEST_TAG = "finmerge.digest"
# written beside the files by finmerge (manifest, upload marker) or by stock MLflow loading a local-path
# version (registered_model_meta): not part of the model
HARMLESS = {storage.MANIFEST, storage.WRITING, storage.MLFLOW_LOAD_META}


class IntegrityError(storage.StorageError):
    """A folder differs from what was recorded; nothing was used."""


def _sha256(fs, path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_folder(uri: str, recorded_digest: str) -> dict:
    """Check ``uri`` (local or ``s3://``) against ``recorded_digest``; returns ``{"digest", "files", "bytes"}``.

    Raises :class:`IntegrityError` on the first difference, naming the file and the two digests."""
    manifest = storage.read_manifest(uri)
    if manifest is None:
        raise IntegrityError(
            f"{uri}: no {storage.MANIFEST}; cannot verify it against digest {recorded_digest}"
        )
    files = manifest.get("files") or {}
    listed = storage.folder_digest(files)
    if listed != recorded_digest:
        raise IntegrityError(
            f"{storage.join(uri, storage.MANIFEST)}: lists content with digest {listed}, but digest "
            f"{recorded_digest} was recorded at registration; the folder was rewritten"
        )
    fs, root = storage.filesystem(uri)
    fs.invalidate_cache(root)
    present = {p[len(root) :].lstrip("/"): fs.info(p)["size"] for p in fs.find(root)}
    for rel, info in sorted(files.items()):
        where = storage.join(uri, rel)
        if rel not in present:
            raise IntegrityError(f"{where}: missing (recorded sha256 {info['sha256']})")
        got = _sha256(fs, f"{root}/{rel}")
        if got != info["sha256"]:
            raise IntegrityError(
                f"{where}: sha256 {got} ({present[rel]} bytes) does not match the recorded sha256 "
                f"{info['sha256']} ({info['size']} bytes)"
            )
    extra = sorted(set(present) - set(files) - HARMLESS)
    if extra:
        raise IntegrityError(
            f"{storage.join(uri, extra[0])}: not part of the recorded folder (digest {recorded_digest})"
        )
    return {"digest": recorded_digest, "files": len(files), "bytes": sum(i["size"] for i in files.values())}


def recorded_digest(mv) -> str:
    """The digest a model version was registered with (its ``finmerge.digest`` tag)."""
    digest = (mv.tags or {}).get(DIGEST_TAG)
    if not digest:
        raise IntegrityError(
            f"model {mv.name} version {mv.version}: no {DIGEST_TAG} tag, so its files cannot be verified; "
            "register it with finmerge"
        )
    return digest


def verify_version(client, name: str, version: str) -> dict:
    """Verify model version ``name``/``version``'s source folder; returns :func:`verify_folder`'s summary with
    the version's ``source``."""
    mv = client.get_model_version(name, str(version))
    return {**verify_folder(mv.source, recorded_digest(mv)), "source": mv.source}


def resolve_models_uri(uri: str, tracking_uri: str):
    """The model version a ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` URI names."""
    from finmerge.core import tracking

    ref = uri[len("models:/") :].strip("/")
    client = tracking.client(tracking_uri)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias.lower())
    name, _, version = ref.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    return client.get_model_version(name, version)

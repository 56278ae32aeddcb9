"""Loading Hugging Face causal LMs safely: safetensors only, no remote code unless asked, no downloads."""

from __future__ import annotations

import json
from pathlib import Path

from finmerge import storage


class ModelFormatError(ValueError):
    pass


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder; refuses pickle-only checkpoints with a clear error."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (folder / n).exists()]
        if missing:
            raise ModelFormatError(f"{folder}: index names missing shard(s) {missing}")
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
    if pickles:
        raise ModelFormatError(
            f"{folder}: only pickle weights ({', '.join(pickles)}); finmerge loads safetensors only "
            "(convert with `transformers` save_pretrained(safe_serialization=True))"
        )
    raise ModelFormatError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def stage_model(uri: str, staging_dir: str) -> Path:
    """A local folder holding the model at ``uri`` (S3 models are downloaded and verified once)."""
    if storage.is_remote(uri):
        if storage.read_manifest(uri) is None:
            return _download_plain(uri, staging_dir)
        return storage.stage_folder(uri, staging_dir)
    path = storage.local_path(uri)
    if not (path / "config.json").exists():
        raise ModelFormatError(f"{uri}: not a Hugging Face model folder (no config.json)")
    return path


def _download_plain(uri: str, staging_dir: str) -> Path:
    """A model folder on S3 that finmerge did not write (no manifest): copy it as it is."""
    import hashlib
    import os
    import shutil
    import tempfile

    fs, root = storage.filesystem(uri)
    listing = {p: fs.info(p) for p in fs.find(root)}
    if not any(p.endswith("/config.json") for p in listing):
        raise ModelFormatError(f"{uri}: not a Hugging Face model folder (no config.json)")
    tag = hashlib.sha256(
        json.dumps(
            {p: i.get("ETag") or i["size"] for p, i in listing.items()}, sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:32]
    dest = Path(staging_dir).expanduser().resolve() / "inputs" / tag
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest.parent))
    for p in listing:
        rel = p[len(root) :].lstrip("/")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(p, str(tmp / rel))
    try:
        os.replace(tmp, dest)
    except OSError:  # another rank of the same job finished the same download first
        if not (dest / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_causal_lm(folder: Path, trust_remote_code: bool = False, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    weight_files(folder)  # fail early and clearly on pickle-only or broken folders
    model = AutoModelForCausalLM.from_pretrained(
        str(folder),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        dtype=dtype or torch.float32,
    )
    model.eval()
    return model


def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(folder), trust_remote_code=trust_remote_code, local_files_only=True
    )


def fingerprint(uri: str) -> str:
    """Content identity of a model folder: its manifest digest, else a hash of its file listing and config.

    Folders finmerge wrote carry a manifest; for others (a user's HF folder) names, sizes and the config
    stand in, which changes whenever the weights are re-saved.
    """
    import hashlib

    manifest = storage.read_manifest(uri)
    if manifest is not None:
        return manifest["digest"]
    fs, root = storage.filesystem(uri)
    h = hashlib.sha256()
    for path in sorted(fs.find(root)):
        info = fs.info(path)
        h.update(
            f"{path[len(root) :]}\t{info['size']}\t{info.get('ETag') or info.get('mtime', '')}\n".encode()
        )
    if storage.exists(storage.join(uri, "config.json")):
        h.update(storage.read_bytes(storage.join(uri, "config.json")))
    return h.hexdigest()


def tokenizer_fingerprint(uri: str) -> str:
    """Content identity of a model folder's tokenizer alone (local path or s3://).

    Hashes the names and bytes of the tokenizer-defining files that exist, so models fine-tuned from one base
    (same tokenizer, different weights) share it and a tokenized corpus can be reused across them.
    """
    import hashlib

    names = {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "chat_template.jinja",
    }
    fs, root = storage.filesystem(uri)
    try:
        listing = fs.ls(root, detail=False)
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{uri}: no such model folder") from exc
    found = sorted(
        name
        for name in (str(p).rstrip("/").rsplit("/", 1)[-1] for p in listing)
        if name in names or name.endswith(".tiktoken")
    )
    if not found:
        raise ModelFormatError(f"{uri}: no tokenizer files (tokenizer.json, tokenizer.model, vocab.json…)")
    h = hashlib.sha256()
    for name in found:
        data = storage.read_bytes(storage.join(uri, name))
        h.update(f"{name}\t{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()

"""Loading Hugging Face causal LMs safely: safetensors only, no remote code unless asked, no downloads.

Pickle checkpoints (``.bin`` / ``.pt`` / ``.pth``) are refused without being opened. With the opt-in
(``models.allow_pickle: true``) :func:`stage_model` converts them to a safetensors folder in staging, reading
them with ``torch.load(weights_only=True)`` only: a file that holds anything but tensors (code) is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from finmerge.core import storage


class ModelFormatError(ValueError):
    pass


PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth")
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Pickles that trainers leave beside the weights; never weights themselves.
NOT_WEIGHTS = re.compile(r"^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$")
OPT_IN = (
    "set `models.allow_pickle: true` (--set models.allow_pickle=true) to convert them to safetensors in "
    "staging with torch.load(weights_only=True), or convert them yourself with transformers "
    "save_pretrained(safe_serialization=True)"
)
CONVERTED = "_converted_from_pickle.json"


def pickle_files(folder: Path) -> list[str]:
    """Names of the pickle files in ``folder`` (listed only, never opened)."""
    return sorted({p.name for pat in PICKLE_PATTERNS for p in Path(folder).glob(pat) if p.is_file()})


def read_index(index: Path) -> dict[str, str]:
    """``tensor name -> file`` from a (safetensors or pickle) index file."""
    try:
        weight_map = json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{index}: unreadable index ({type(exc).__name__}: {exc})") from exc
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelFormatError(f"{index}: weight_map is not an object of tensor name -> file name")
    return weight_map


def read_config(folder: Path) -> dict:
    """The folder's ``config.json`` as a dict; missing, unreadable or non-object files are clear errors."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise ModelFormatError(f"{path}: missing; not a Hugging Face model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: unreadable ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ModelFormatError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def refuse_remote_code(folder: Path, config: dict, trust_remote_code: bool, what: str = "model") -> None:
    """Custom code (``auto_map``) is refused, before transformers sees the folder, unless trusted."""
    if trust_remote_code:
        return
    for file, auto_map in _code_maps(Path(folder), config, what).items():
        if auto_map:
            raise ModelFormatError(
                f"{Path(folder) / file}: auto_map {json.dumps(auto_map)[:200]} asks for custom {what} code "
                "from the folder; refused, nothing was run (set `models.trust_remote_code: true` if you trust it)"
            )


def _code_maps(folder: Path, config: dict, what: str) -> dict:
    """The ``auto_map`` entries that would make transformers import code from the folder to load ``what``."""
    auto_map = config.get("auto_map")
    if what != "tokenizer":
        return {"config.json": auto_map}
    maps = {"config.json": auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else None}
    tc = folder / "tokenizer_config.json"
    if tc.exists():
        try:
            maps["tokenizer_config.json"] = json.loads(tc.read_text(encoding="utf-8")).get("auto_map")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise ModelFormatError(f"{tc}: unreadable ({exc})") from exc
    return maps


def _index_shards(index: Path, subject: str) -> list[Path]:
    """The shard files a weight index names, sorted; a missing one is a :class:`ModelFormatError` that
    starts with ``subject``."""
    names = sorted(set(read_index(index).values()))
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise ModelFormatError(f"{subject} names missing shard(s) {missing}")
    return [index.parent / n for n in names]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder; refuses pickle-only checkpoints with a clear error."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return _index_shards(index, f"{folder}: index")
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    pickles = pickle_files(folder)
    if pickles:
        raise ModelFormatError(
            f"{folder}: only pickle weights ({', '.join(pickles)}); refused without opening them, since "
            f"unpickling can run code. To use them, {OPT_IN}"
        )
    raise ModelFormatError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def stage_model(uri: str, staging_dir: str, allow_pickle: bool = False) -> Path:
    """A local folder holding the model at ``uri`` (S3 models are downloaded and verified once).

    Its ``config.json`` must parse. A pickle-only folder is refused (nothing opened) unless ``allow_pickle``;
    then its weights are converted to safetensors in staging (see :func:`convert_pickle_folder`). A
    ``models:/<name>@<alias>`` (or ``/<version>``) URI is the registered version's folder, verified first
    against the digest recorded at registration (:func:`finmerge.core.integrity.verify_folder`)."""
    if uri.startswith("models:/"):
        return stage_model(str(_verified_registered(uri, staging_dir)), staging_dir, allow_pickle)
    if storage.is_remote(uri):
        if storage.read_manifest(uri) is None:
            path = _download_plain(uri, staging_dir, allow_pickle)
        else:
            path = storage.stage_folder(uri, staging_dir)
    else:
        path = storage.local_path(uri)
        if not path.is_dir():
            raise ModelFormatError(f"{uri}: no such model folder")
    read_config(path)
    if _has_safetensors(path) or not pickle_files(path):
        return path  # no weights at all: callers that need them say so (weight_files)
    if not allow_pickle:
        weight_files(path)  # raises the refusal, naming the files and the opt-in
    return convert_pickle_folder(path, staging_dir)


def _verified_registered(uri: str, staging_dir: str) -> Path:
    """The local folder of the version ``uri`` names, every file checked against its recorded digest (for an
    S3 source: the staged copy, so the bytes checked are the bytes loaded)."""
    from finmerge.config import TrackingConfig
    from finmerge.core import integrity, tracking

    mv = integrity.resolve_models_uri(uri, tracking.resolve_uri(TrackingConfig()))
    digest = integrity.recorded_digest(mv)
    folder = storage.stage_folder(mv.source, staging_dir)
    integrity.verify_folder(str(folder), digest)
    return folder


def _has_safetensors(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() or (folder / "model.safetensors.index.json").exists()


def _pickle_sources(folder: Path) -> list[Path]:
    """The pickle weight files of a folder: its index's shards, ``pytorch_model.bin``, or every pickle that
    is not trainer state."""
    index = folder / PICKLE_INDEX
    if index.exists():
        return _index_shards(index, f"{index}:")
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    names = [n for n in pickle_files(folder) if not NOT_WEIGHTS.match(n)]
    if not names:
        raise ModelFormatError(
            f"{folder}: no weight files (only trainer state: {', '.join(pickle_files(folder))})"
        )
    return [folder / n for n in names]


def _load_weights_only(path: Path) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means: not a plain tensor file
        reason = _short_reason(str(exc))
        raise ModelFormatError(
            f"{path}: refused by torch.load(weights_only=True), so not converted: {type(exc).__name__}: "
            f"{reason or 'unreadable'}. The file holds more than tensors (objects or code) or is damaged; "
            "finmerge never unpickles it fully"
        ) from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ModelFormatError(
            f"{path}: not a flat state dict of tensors (found {type(obj).__name__}); nothing converted"
        )
    return obj


def _short_reason(text: str) -> str:
    """The line of a torch.load error that says what was refused (not its advice to disable the check)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hit = next((ln for ln in lines if "WeightsUnpickler error" in ln), None)
    if hit is not None:
        return hit.split(". Please use")[0][:300]
    return lines[0][:300] if lines else ""


TIED_OUTPUT = re.compile(r"(^|\.)(lm_head|embed_out)\.weight$")


def _unshare(sd: dict, tied: bool) -> dict:
    """Tensors safetensors can store: a tied output embedding that is the very same tensor as the input
    embedding is dropped (as ``save_pretrained`` does); other tensors sharing memory get their own copy."""
    import torch

    groups: dict[int, list[str]] = {}
    for name, t in sd.items():
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        groups.setdefault(key, []).append(name)
    out: dict[str, torch.Tensor] = {}
    for names in groups.values():
        if len(names) == 1:
            out[names[0]] = sd[names[0]].contiguous()
            continue
        names.sort(key=lambda n: (bool(TIED_OUTPUT.search(n)), n))
        keep = sd[names[0]]
        for n in names:
            t = sd[n]
            alias = (t.data_ptr(), t.shape, t.stride()) == (keep.data_ptr(), keep.shape, keep.stride())
            if n != names[0] and alias and tied and TIED_OUTPUT.search(n):
                continue
            out[n] = t.contiguous().clone()
    return out


def _same_bits(a, b) -> bool:
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def convert_pickle_folder(folder: Path, staging_dir: str) -> Path:
    """A safetensors copy of the pickle-only model ``folder`` under ``<staging>/inputs/pickle-<digest>``.

    Each weight file is read with ``torch.load(weights_only=True)``, written with safetensors, read back and
    compared bit for bit; the other files (config, tokenizer) are copied. The folder appears atomically,
    marked complete by ``_converted_from_pickle.json``, and is reused while the source files are unchanged.
    """
    import hashlib
    import os
    import shutil
    import tempfile

    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = Path(folder)
    config = read_config(folder)
    sources = _pickle_sources(folder)
    digests = {p.name: storage.sha256_file(p) for p in sources}
    key = hashlib.sha256(
        json.dumps({"sources": digests, "config": config}, sort_keys=True).encode()
    ).hexdigest()
    dest = Path(staging_dir).expanduser().resolve() / "inputs" / f"pickle-{key[:32]}"
    if (dest / CONVERTED).exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest.parent))
    try:
        skip = {p.name for p in sources} | {PICKLE_INDEX, storage.MANIFEST}
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.name not in skip and not NOT_WEIGHTS.match(p.name):
                shutil.copy2(p, tmp / p.name)
        tied = bool(config.get("tie_word_embeddings", True))
        n = len(sources)
        weight_map: dict[str, str] = {}
        total = 0
        for i, src in enumerate(sources, 1):
            sd = _unshare(_load_weights_only(src), tied)
            name = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
            clash = sorted(set(sd) & set(weight_map))
            if clash:
                raise ModelFormatError(f"{src}: tensor {clash[0]} is also in {weight_map[clash[0]]}")
            save_file(sd, str(tmp / name), metadata={"format": "pt"})
            with safe_open(str(tmp / name), framework="pt") as back:  # read back one tensor at a time
                written = set(back.keys())
                bad = sorted(k for k in sd if k not in written or not _same_bits(sd[k], back.get_tensor(k)))
            if bad or written != set(sd):
                raise ModelFormatError(f"{src}: conversion check failed for tensor(s) {bad[:5]}")
            weight_map.update(dict.fromkeys(sd, name))
            total += sum(t.numel() * t.element_size() for t in sd.values())
            del sd
        if n > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / CONVERTED).write_text(
            json.dumps({"source": str(folder), "sha256": digests, "tensors": len(weight_map)}, indent=2)
            + "\n"
        )
        try:
            os.replace(tmp, dest)
        except OSError:  # another process converted the same files first
            if not (dest / CONVERTED).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _download_plain(uri: str, staging_dir: str, allow_pickle: bool = False) -> Path:
    """A model folder on S3 that finmerge did not write (no manifest): copy it as it is. Pickle-only weights
    are refused from the listing, before anything is downloaded, unless ``allow_pickle``."""
    import hashlib
    import os
    import shutil
    import tempfile

    fs, root = storage.filesystem(uri)
    listing = {p: fs.info(p) for p in fs.find(root)}
    if not any(p.endswith("/config.json") for p in listing):
        raise ModelFormatError(f"{uri}: not a Hugging Face model folder (no config.json)")
    top = {p[len(root) :].strip("/") for p in listing}
    pickles = sorted(n for n in top if "/" not in n and any(Path(n).match(pat) for pat in PICKLE_PATTERNS))
    if pickles and not allow_pickle and not top & {"model.safetensors", "model.safetensors.index.json"}:
        raise ModelFormatError(
            f"{uri}: only pickle weights ({', '.join(pickles)}); refused without downloading or opening them, "
            f"since unpickling can run code. To use them, {OPT_IN}"
        )
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


def load_causal_lm(folder: Path, trust_remote_code: bool = False, dtype=None, check_finite: bool = True):
    """The model in ``folder``, after checks that name the file and the tensor: config.json parses, no
    custom code unless trusted, safetensors headers consistent with the files (not truncated), every weight
    the architecture needs present with its shape (transformers would initialise missing ones at random)
    and, with ``check_finite``, no NaN or Inf parameter."""
    import torch
    from transformers import AutoModelForCausalLM

    from finmerge.models.safetensors_stream import SafetensorsModel

    folder = Path(folder)
    refuse_remote_code(folder, read_config(folder), trust_remote_code)
    tensors = SafetensorsModel(folder).tensors  # pickle-only, truncated or lying files fail here
    model, info = AutoModelForCausalLM.from_pretrained(
        str(folder),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        dtype=dtype or torch.float32,
        output_loading_info=True,
        ignore_mismatched_sizes=True,  # reported below, by name, instead of transformers' generic error
    )
    problems = [
        f"tensor {k}: shape {list(ckpt)} in the checkpoint, {list(want)} expected from config.json"
        for k, ckpt, want in sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    ] + [f"tensor {k}: missing from the weight files" for k in sorted(info.get("missing_keys") or [])]
    if problems:
        head = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelFormatError(f"{folder}: weights do not fit config.json: {head}")
    if check_finite:
        _check_finite_parameters(folder, model, tensors)
    model.eval()
    return model


def _check_finite_parameters(folder: Path, model, tensors: dict) -> None:
    import torch

    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            n_nan, n_inf = int(torch.isnan(p).sum()), int(torch.isinf(p).sum())
            where = tensors[name].file if name in tensors else folder
            raise ModelFormatError(f"{where}: tensor {name}: {n_nan} NaN and {n_inf} Inf value(s)")


def load_tokenizer(folder: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder = Path(folder)
    config = read_config(folder) if (folder / "config.json").exists() else {}  # tokenizer-only folders
    refuse_remote_code(folder, config, trust_remote_code, what="tokenizer")
    return AutoTokenizer.from_pretrained(
        str(folder), trust_remote_code=trust_remote_code, local_files_only=True
    )


def fingerprint(uri: str) -> str:
    """Content identity of a model folder: its manifest digest, else a hash of its file listing and config.

    Folders finmerge wrote carry a manifest; for others (a user's HF folder) names, sizes and the config
    stand in, which changes whenever the weights are re-saved.
    """
    import hashlib

    if uri.startswith("models:/"):
        # a registered version: the digest it was registered (and is verified) with
        from finmerge.config import TrackingConfig
        from finmerge.core import integrity, tracking

        version = integrity.resolve_models_uri(uri, tracking.resolve_uri(TrackingConfig()))
        return integrity.recorded_digest(version)
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

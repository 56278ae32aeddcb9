"""Retraining on new filings: how many new tokens the corpus holds, and which objects are new under a prefix.

* :func:`pending_tokens` compares the corpus (the dedup lineage HEAD points at) with the corpus the model
  line's latest cpt version was trained on (its ``finmerge.corpus_digest`` tag) and counts, with the base
  tokenizer, the tokens of the dedup batches added since. Only those batches are read, never the whole corpus.
* :func:`scan_new_objects` lists watched prefixes and compares them with the listing it saw last time (kept
  next to the corpus in storage), for the watcher that emits the ``finmerge.filings.arrived`` event.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator

from finmerge.core import storage, tracking
from finmerge.models import loading as modelio

ARRIVED_EVENT = "finmerge.filings.arrived"


def line_resource(line: str) -> str:
    """The Prefect event resource id of a model line (the retrain-on-event trigger matches it)."""
    return f"finmerge.line.{line}"


def trained_corpus(tracking_uri: str, cpt_name: str) -> dict | None:
    """The newest cpt version of the line (not step checkpoints): its version and corpus digest."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(tracking_uri)
    try:
        versions = client.search_model_versions(f"name = '{cpt_name}'")
    except MlflowException:
        return None
    full = [v for v in versions if v.tags.get("finmerge.role") == "cpt"]
    if not full:
        return None
    newest = max(full, key=lambda v: int(v.version))
    return {"version": str(newest.version), "corpus_digest": newest.tags.get("finmerge.corpus_digest")}


def new_batches(corpus_uri: str, corpus_digest: str, trained_digest: str | None) -> list[str]:
    """The dedup folders of the corpus at ``corpus_uri`` that came after the one ``trained_digest`` names
    (all of them when it is None or not in this lineage, e.g. after the cleaning rules changed)."""
    if trained_digest == corpus_digest:
        return []
    chain = storage.read_json(storage.join(corpus_uri, "chain.json"))
    digests = [e["digest"] for e in chain[:-1]] + [corpus_digest]  # the last entry is the folder itself
    start = digests.index(trained_digest) + 1 if trained_digest in digests else 0
    return [e["uri"] for e in chain[start:-1]] + ([corpus_uri] if start < len(chain) else [])


def _texts(folders: Iterable[str], staging_dir: str) -> Iterator[str]:
    for uri in folders:
        local = storage.stage_folder(uri, staging_dir)
        for rec in storage.iter_jsonl(local / storage.DOCS, "text"):
            yield rec["text"]


def count_tokens(texts: Iterable[str], tokenizer, batch: int = 256) -> dict[str, int]:
    """Documents and tokens as the tokenize stage counts them (one EOS per document)."""
    docs = tokens = 0
    chunk: list[str] = []

    def flush() -> None:
        nonlocal docs, tokens
        if chunk:
            ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
            docs += len(chunk)
            tokens += sum(len(x) + 1 for x in ids)
            chunk.clear()

    for text in texts:
        chunk.append(text)
        if len(chunk) >= batch:
            flush()
    flush()
    return {"docs": docs, "tokens": tokens}


def pending_tokens(
    corpus: dict,
    *,
    tokenizer_uri: str,
    tracking_uri: str,
    cpt_name: str,
    staging_dir: str,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict:
    """What the line has not trained on yet: new batch folders, their documents and tokens."""
    trained = trained_corpus(tracking_uri, cpt_name)
    folders = new_batches(corpus["uri"], corpus["digest"], trained and trained["corpus_digest"])
    counts = {"docs": 0, "tokens": 0}
    if folders:
        tok = modelio.load_tokenizer(
            modelio.stage_model(tokenizer_uri, staging_dir, allow_pickle), trust_remote_code
        )
        counts = count_tokens(_texts(folders, staging_dir), tok)
    return {
        "trained_version": trained and trained["version"],
        "trained_corpus": trained and trained["corpus_digest"],
        "corpus_digest": corpus["digest"],
        "new_batches": len(folders),
        "new_docs": counts["docs"],
        "new_tokens": counts["tokens"],
    }


def decide(pending: dict, min_new_tokens: int, force: bool = False) -> tuple[bool, str]:
    """Whether to retrain, and why (the reason goes into the run's summary)."""
    n = pending["new_tokens"]
    if force:
        return True, f"forced ({n:,} new tokens)"
    if pending["trained_version"] is None:
        return True, f"no cpt version yet ({n:,} tokens in the corpus)"
    if n >= min_new_tokens:
        return True, f"{n:,} new tokens ≥ threshold {min_new_tokens:,}"
    return False, f"{n:,} new tokens < threshold {min_new_tokens:,}; waiting for more filings"


# --- the watcher ---------------------------------------------------------------------------------------


def _listing(uris: Iterable[str]) -> dict[str, str]:
    """Every object under ``uris``: path -> ETag (S3) or size:mtime (local)."""
    seen: dict[str, str] = {}
    for uri in uris:
        fs, path = storage.filesystem(uri)
        fs.invalidate_cache()  # s3fs caches listings; a watcher must see new keys
        if not fs.exists(path):
            continue
        paths = fs.find(path, detail=True) if fs.isdir(path) else {p: fs.info(p) for p in fs.glob(path)}
        for p, info in paths.items():
            tag = info.get("ETag") or f"{info.get('size')}:{info.get('mtime', '')}"
            seen[fs.unstrip_protocol(p) if storage.is_remote(uri) else p] = str(tag)
    return seen


def watch_state_uri(storage_uri: str, uris: list[str]) -> str:
    key = hashlib.sha256("\n".join(sorted(uris)).encode()).hexdigest()[:16]
    return storage.join(storage_uri, "retrain", f"watch-{key}.json")


def scan_new_objects(uris: list[str], state_uri: str) -> dict:
    """Objects under ``uris`` that are new or changed since the last scan; the listing is saved (atomically,
    one object) only after the caller has acted on it (see :func:`commit_scan`)."""
    before = storage.read_json(state_uri)["objects"] if storage.exists(state_uri) else {}
    now = _listing(uris)
    new = sorted(p for p, tag in now.items() if before.get(p) != tag)
    return {"new": new, "listing": now, "first_scan": not storage.exists(state_uri)}


def commit_scan(state_uri: str, listing: dict[str, str]) -> None:
    storage.write_json(
        state_uri, {"objects": listing, "scanned": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    )

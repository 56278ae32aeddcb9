"""Exact and near-duplicate removal: sha256 of normalised text, then MinHash LSH on character n-grams.

1. **Exact**: documents whose normalised text (whitespace collapsed; none kept next to Japanese characters)
   has the same sha256 form one unit.
2. **Near**: each unit's text is cut into character ``cfg.ngram``-grams, hashed once to 64 bits (a vectorised
   polynomial rolling hash over code points, finalised with splitmix64), and signed with ``cfg.bands * cfg.rows``
   universal-hash permutations ``h(x) = a·x + b mod 2^64`` (odd ``a``; seeded by ``cfg.seed``), keeping the high 32
   bits of the minimum. Units sharing a band bucket are candidate pairs; with ``cfg.verify`` a pair is confirmed
   only when the exact Jaccard of the two n-gram sets is ``>= cfg.threshold`` (without it every candidate pair is
   accepted, as Swallow / datatrove do).
3. **Clusters**: union-find over exact units and confirmed pairs. One document per cluster is kept: ``earliest``
   = earliest ``filing_date`` (documents without a date last), then input order; ``longest`` = most characters,
   then input order. Every other member points at the kept one: ``kind`` is ``exact`` when its normalised text is
   identical to the kept document's, else ``near``, with the exact Jaccard of the two n-gram sets.

Output folder: ``docs.jsonl`` (kept, input order), ``duplicates.jsonl`` (``{"id","duplicate_of","kind",
"jaccard"}``), ``stats.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter, defaultdict

import numpy as np

from finmerge import storage
from finmerge.config import DedupConfig
from finmerge.orchestration import stage_task

MAX_BUCKET_PAIRS = 64  # buckets larger than this are linked as a star + chain instead of all pairs
_CHUNK = 4096  # shingles per block of the signature computation (bounds memory on long documents)
_P = np.uint64(0x100000001B3)  # odd multiplier of the rolling hash
_WS = re.compile(r"\s+")
_WS_CJK = re.compile(r" (?=[^\x00-\x7f])|(?<=[^\x00-\x7f]) ")
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def normalize(text: str) -> str:
    """Whitespace runs collapsed to one space, and dropped next to non-ASCII (Japanese) characters, where a
    line break or space carries no meaning; English keeps its word spaces."""
    return _WS_CJK.sub("", _WS.sub(" ", text).strip())


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the character n-grams of ``text`` (the whole text when shorter)."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if cp.size == 0:
        return np.zeros(1, dtype=np.uint64)
    n = min(n, cp.size)
    m = cp.size - n + 1
    with np.errstate(over="ignore"):
        h = np.zeros(m, dtype=np.uint64)
        for k in range(n):
            h = h * _P + cp[k : k + m]
        return np.unique(_mix(h + np.uint64(n)))


class MinHasher:
    def __init__(self, num_perm: int, seed: int):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        sig = np.full(self.a.size, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i in range(0, hashes.size, _CHUNK):
                x = hashes[i : i + _CHUNK]
                vals = self.a[:, None] * x[None, :] + self.b[:, None]
                np.minimum(sig, vals.min(axis=1), out=sig)
        return (sig >> np.uint64(32)).astype(np.uint32)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs (i < j) of rows of ``sigs`` that agree on all ``rows`` values of at least one band."""
    pairs: set[tuple[int, int]] = set()
    n = sigs.shape[0]
    if n < 2:
        return pairs
    with np.errstate(over="ignore"):
        for band in range(bands):
            cols = sigs[:, band * rows : (band + 1) * rows].astype(np.uint64)
            key = np.full(n, np.uint64(band + 1), dtype=np.uint64)
            for c in range(rows):
                key = _mix(key * _P + cols[:, c])
            order = np.argsort(key, kind="stable")
            sk = key[order]
            starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
            ends = np.r_[starts[1:], n]
            for s, e in zip(starts, ends, strict=True):
                if e - s < 2:
                    continue
                members = sorted(order[s:e].tolist())
                if e - s <= MAX_BUCKET_PAIRS:
                    for x in range(len(members)):
                        for y in range(x + 1, len(members)):
                            pairs.add((members[x], members[y]))
                else:
                    for x in range(1, len(members)):
                        pairs.add((members[0], members[x]))
                        pairs.add((members[x - 1], members[x]))
    # equal keys may still be a (rare) 64-bit key collision: keep pairs whose rows really match in a band
    return {(i, j) for i, j in pairs if _band_match(sigs, i, j, bands, rows)}


def _band_match(sigs: np.ndarray, i: int, j: int, bands: int, rows: int) -> bool:
    eq = (sigs[i] == sigs[j])[: bands * rows].reshape(bands, rows)
    return bool(eq.all(axis=1).any())


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _keep_key(policy: str):
    if policy == "earliest":
        return lambda i, rec: (rec.get("filing_date") or "9999-99-99", i)
    if policy == "longest":
        return lambda i, rec: (-len(rec.get("text") or ""), i)
    raise ValueError(f"unknown keep policy {policy!r}")


def find_duplicates(records: list[dict], cfg: DedupConfig) -> tuple[list[dict], dict]:
    """Duplicate rows ``{"id","duplicate_of","kind","jaccard"}`` (input order) and counters."""
    t0 = time.perf_counter()
    texts = [normalize(r.get("text") or "") for r in records]
    unit_of_sha: dict[str, int] = {}
    unit = []  # record index -> unit index
    unit_first = []  # unit index -> first record index
    for i, t in enumerate(texts):
        sha = hashlib.sha256(t.encode("utf-8")).hexdigest()
        u = unit_of_sha.setdefault(sha, len(unit_first))
        if u == len(unit_first):
            unit_first.append(i)
        unit.append(u)
    n_units = len(unit_first)

    hasher = MinHasher(cfg.bands * cfg.rows, cfg.seed)
    shingles: dict[int, np.ndarray] = {}
    sigs = np.zeros((n_units, cfg.bands * cfg.rows), dtype=np.uint32)
    for u, i in enumerate(unit_first):
        sigs[u] = hasher.signature(shingle_hashes(texts[i], cfg.ngram))
    t_sig = time.perf_counter() - t0

    def sh(u: int) -> np.ndarray:
        if u not in shingles:
            shingles[u] = shingle_hashes(texts[unit_first[u]], cfg.ngram)
        return shingles[u]

    cands = sorted(candidate_pairs(sigs, cfg.bands, cfg.rows))
    uf = UnionFind(n_units)
    confirmed = 0
    for a, b in cands:
        if cfg.verify and jaccard(sh(a), sh(b)) < cfg.threshold:
            continue
        confirmed += 1
        uf.union(a, b)

    key = _keep_key(cfg.keep)
    best: dict[int, int] = {}  # cluster root -> kept record index
    for i, rec in enumerate(records):
        root = uf.find(unit[i])
        if root not in best or key(i, rec) < key(best[root], records[best[root]]):
            best[root] = i
    dups = []
    for i, rec in enumerate(records):
        k = best[uf.find(unit[i])]
        if k == i:
            continue
        if unit[i] == unit[k]:
            dups.append({"id": rec["id"], "duplicate_of": records[k]["id"], "kind": "exact", "jaccard": 1.0})
        else:
            j = round(jaccard(sh(unit[i]), sh(unit[k])), 4)
            dups.append({"id": rec["id"], "duplicate_of": records[k]["id"], "kind": "near", "jaccard": j})
    stats = {
        "in": len(records),
        "unique_texts": n_units,
        "candidate_pairs": len(cands),
        "confirmed_pairs": confirmed,
        "clusters": len(best),
        "duplicate_clusters": sum(
            1 for n in Counter(uf.find(unit[i]) for i in range(len(records))).values() if n > 1
        ),
        "exact_dups": sum(1 for d in dups if d["kind"] == "exact"),
        "near_dups": sum(1 for d in dups if d["kind"] == "near"),
        "seconds_signatures": round(t_sig, 3),
        "seconds_total": round(time.perf_counter() - t0, 3),
    }
    return dups, stats


def dedup(in_uri: str, out_uri: str, cfg: DedupConfig, staging_dir: str) -> dict:
    """Deduplicate ``in_uri``/docs.jsonl into ``out_uri`` (atomic folder); return the folder's result."""
    if storage.read_manifest(in_uri) is None:
        raise storage.StorageError(f"{in_uri}: missing {storage.MANIFEST}; run clean first")
    src = storage.stage_folder(in_uri, staging_dir) / "docs.jsonl"
    records = list(storage.iter_jsonl(src))
    dups, st = find_duplicates(records, cfg)
    dropped = {d["id"] for d in dups}
    near_j = [d["jaccard"] for d in dups if d["kind"] == "near"]
    by_section: dict[str, int] = defaultdict(int)
    with storage.output_folder(out_uri, staging_dir, meta={}) as out:
        with open(out.path / "docs.jsonl", "w", encoding="utf-8") as fh:
            for rec in records:
                if rec["id"] not in dropped:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                else:
                    by_section[rec.get("section") or "(none)"] += 1
        with open(out.path / "duplicates.jsonl", "w", encoding="utf-8") as fh:
            for d in dups:
                fh.write(json.dumps(d, ensure_ascii=False) + "\n")
        kept = len(records) - len(dropped)
        timings = {
            k: st.pop(k) for k in ("seconds_signatures", "seconds_total")
        }  # meta only: files stay reproducible
        stats = {
            **st,
            "kept": kept,
            "config": cfg.model_dump(),
            "detection_threshold": round((1 / cfg.bands) ** (1 / cfg.rows), 4),
            "near_jaccard": {
                "min": min(near_j) if near_j else None,
                "mean": round(sum(near_j) / len(near_j), 4) if near_j else None,
            },
            "dropped_by_section": dict(sorted(by_section.items())),
        }
        (out.path / "stats.json").write_text(
            json.dumps(stats, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        out.meta["counts"] = {
            "in": st["in"],
            "kept": kept,
            "exact_dups": st["exact_dups"],
            "near_dups": st["near_dups"],
            "unique_texts": st["unique_texts"],
            "candidate_pairs": st["candidate_pairs"],
            "confirmed_pairs": st["confirmed_pairs"],
        }
        out.meta["metrics"] = {
            "dedup/kept_ratio": kept / st["in"] if st["in"] else 0.0,
            "dedup/exact_dups": float(st["exact_dups"]),
            "dedup/near_dups": float(st["near_dups"]),
            "dedup/candidate_pairs": float(st["candidate_pairs"]),
            "dedup/confirmed_pairs": float(st["confirmed_pairs"]),
            "dedup/seconds": float(timings["seconds_total"]),
            "dedup/seconds_signatures": float(timings["seconds_signatures"]),
        }
        out.meta["artifacts"] = ["stats.json"]
    return out.result()


# Prefect wrapper: cached on the output folder (content-keyed), retried on I/O errors, tracked in MLflow.
dedup_task = stage_task("dedup", dedup)

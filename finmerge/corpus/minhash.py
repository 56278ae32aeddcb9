"""Near-duplicate detection primitives: dedup keys, character n-gram hashes, MinHash signatures, LSH banding.

Pure numpy, no Prefect: the shard worker ``sign_shard`` runs in spawned processes and on Dask workers.

* **Dedup key** (``normalize_key``): whitespace runs become one space, and vanish next to a non-ASCII
  character (a line break inside Japanese text carries no meaning; English keeps its word spaces). The exact
  key of a document is the first 16 bytes of the sha256 of its dedup key in UTF-32-LE.
* **N-gram hashes**: each code point goes through a random table (splitmix64 of the code point and the seed,
  so the table never depends on a numpy version), and a window of ``ngram`` table values is combined by a
  polynomial (Horner) and a multiply-xorshift finaliser. Texts shorter than ``ngram`` are one n-gram.
  Signatures use 32-bit hashes (fast); exact Jaccard uses 64-bit hashes (collisions negligible).
* **Signature**: one-permutation hashing (Li, Owen & Zhang 2012). Each n-gram hash falls into one of
  ``K = bands * rows`` bins by its high bits; a bin keeps the minimum hash. One hash per n-gram instead of K,
  so the cost does not grow with K. Bins left empty (texts with few n-grams) are filled by optimal
  densification (Shrivastava 2017): bin ``j`` copies the first non-empty bin of a probe sequence that depends
  only on ``(j, attempt, seed)``, so two texts agree on a bin with probability equal to their Jaccard.
* **LSH**: the ``rows`` values of each band are hashed to one 64-bit band key (salted by band). Two texts
  are candidates when they share a band key: ``P(J) = 1 - (1 - J**rows)**bands``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SCHEME = "oph-splitmix-v1"  # change whenever signatures change: stored index segments are then recomputed
MAX_BUCKET_PAIRS = 64  # a band bucket with more members is linked as a star + chain, not all pairs
EXACT_BYTES = 16
MAX_HASHES = 1 << 16  # bins are chosen by the high 16 bits of a 32-bit n-gram hash
_EMPTY = np.uint32(0xFFFFFFFF)
_BLOCK = 1 << 16  # n-gram positions hashed per step: the temporaries stay in the CPU cache
_CODEPOINTS = 0x110000
_P32 = np.uint32(0x9E3779B1)  # odd multipliers of the polynomial hashes
_P64 = np.uint64(0x9E3779B97F4A7C15)
_M32 = np.uint32(0x85EBCA6B)
_M64A, _M64B = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class SignatureParams:
    """What the band keys depend on; an index segment built with other params is recomputed."""

    ngram: int
    bands: int
    rows: int
    seed: int
    scheme: str = SCHEME

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.bands < 1 or self.rows < 1 or self.num_hashes > MAX_HASHES:
            raise ValueError(f"need ngram, bands, rows >= 1 and bands * rows <= {MAX_HASHES}: {self}")

    @property
    def num_hashes(self) -> int:
        return self.bands * self.rows

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Dedup keys and hashing


def normalize_key(text: str) -> str:
    """Whitespace runs → one space between two ASCII characters, nothing elsewhere (also at the ends)."""
    parts = text.split()
    if len(parts) <= 1:
        return parts[0] if parts else ""
    out = [parts[0]]
    for prev, cur in itertools.pairwise(parts):
        if prev[-1] < "\x80" and cur[0] < "\x80":
            out.append(" ")
        out.append(cur)
    return "".join(out)


def code_points(text: str) -> np.ndarray:
    # surrogatepass: JSON may carry lone surrogates; they hash as their code points
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def exact_key(cp: np.ndarray) -> bytes:
    return hashlib.sha256(cp).digest()[:EXACT_BYTES]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * _M64A
        z = (z ^ (z >> np.uint64(27))) * _M64B
        return z ^ (z >> np.uint64(31))


def _fmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(33))) * _M64A
        x = (x ^ (x >> np.uint64(29))) * _M64B
        return x ^ (x >> np.uint64(32))


@functools.lru_cache(maxsize=4)
def code_point_tables(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit, 32-bit) random value of every code point, fixed by ``seed``."""
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        t64 = _splitmix64(np.arange(_CODEPOINTS, dtype=np.uint64) * _P64 + base)
    return t64, (t64 >> np.uint64(32)).astype(np.uint32)


def _horner(t: np.ndarray, n: int, m: int, mult) -> np.ndarray:
    """Polynomial of each window ``t[i:i+n]``, i < m (wrapping arithmetic)."""
    h = t[:m].copy()
    for k in range(1, n):
        h *= mult
        h += t[k : k + m]
    return h


def _finish32(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint32(15)
    h *= _M32
    h ^= h >> np.uint32(13)
    return h


def _short_hash32(t: np.ndarray) -> np.uint32:
    """A text shorter than the n-gram is one n-gram (its length salts it, so '' has a value too)."""
    with np.errstate(over="ignore"):
        h = np.uint32(t.size) * _M32
        for v in t:
            h = h * _P32 + v
        return _finish32(np.array([h], dtype=np.uint32))[0]


def shingle_set(text: str, ngram: int, seed: int) -> np.ndarray:
    """Sorted unique 64-bit hashes of the n-grams of ``normalize_key(text)``, for exact Jaccard."""
    t64, _ = code_point_tables(seed)
    t = t64[code_points(normalize_key(text))]
    with np.errstate(over="ignore"):
        if t.size < ngram:
            h = np.uint64(t.size) * _M64A
            for v in t:
                h = h * _P64 + v
            return _fmix64(np.array([h], dtype=np.uint64))
        return _sorted_unique(_fmix64(_horner(t, ngram, t.size - ngram + 1, _P64)))


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    # sort + mask: ~10x faster than np.unique (hash-based since numpy 2.3) on a few thousand values
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted unique hash arrays."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return inter / union if union else 1.0


def detection_probability(j: float, bands: int, rows: int) -> float:
    """Probability that two texts of Jaccard ``j`` share at least one band."""
    return 1.0 - (1.0 - j**rows) ** bands


# ----------------------------------------------------------------------------------------------------------
# Signatures


def signatures(keys: list[str], p: SignatureParams) -> tuple[np.ndarray, np.ndarray]:
    """Exact keys ``(n, 16) uint8`` and OPH signatures ``(n, K) uint32`` of already normalised texts."""
    n, k, g = len(keys), p.num_hashes, p.ngram
    _, t32 = code_point_tables(p.seed)
    cp = code_points("".join(keys))
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    exact = np.frombuffer(
        b"".join(exact_key(cp[s:e]) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)),
        dtype=np.uint8,
    ).reshape(n, EXACT_BYTES)
    sig = np.full(n * k, _EMPTY, dtype=np.uint32)
    doc_of = np.repeat(np.arange(n, dtype=np.int64), lengths)
    positions = cp.size - g + 1
    with np.errstate(over="ignore"):
        for s in range(0, max(positions, 0), _BLOCK):
            m = min(_BLOCK, positions - s)
            h = _finish32(_horner(t32[cp[s : s + m + g - 1]], g, m, _P32))
            doc = doc_of[s : s + m]
            inside = doc == doc_of[s + g - 1 : s + g - 1 + m]  # the window does not run into the next text
            if not inside.all():
                h, doc = h[inside], doc[inside]
            _bin_min(sig, doc, h, k)
        short = np.flatnonzero(lengths < g)
        if short.size:
            h = np.array([_short_hash32(t32[cp[starts[i] : ends[i]]]) for i in short], dtype=np.uint32)
            _bin_min(sig, short, h, k)
    sig = sig.reshape(n, k)
    _densify(sig, p.seed)
    return exact, sig


def _bin_min(sig: np.ndarray, doc: np.ndarray, h: np.ndarray, k: int) -> None:
    """Bin = high 16 bits scaled to [0, k); the bin keeps the smallest hash."""
    b = ((h >> np.uint32(16)) * np.uint32(k)) >> np.uint32(16)
    np.minimum.at(sig, doc * k + b, h)


def _probe(bins: np.ndarray, attempt: int, k: int, seed: int) -> np.ndarray:
    x = bins.astype(np.uint64) * np.uint64(0x10001) + np.uint64(attempt << 32) + np.uint64(seed & 0xFFFFFFFF)
    return ((_splitmix64(x) >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)


def _densify(sig: np.ndarray, seed: int) -> None:
    empty_docs, empty_bins = np.nonzero(sig == _EMPTY)
    if empty_docs.size == 0:
        return
    k = sig.shape[1]
    original = sig.copy()
    attempt = 0
    while empty_docs.size and attempt < 64 * k:
        attempt += 1
        vals = original[empty_docs, _probe(empty_bins, attempt, k, seed)]
        hit = vals != _EMPTY
        sig[empty_docs[hit], empty_bins[hit]] = vals[hit]
        empty_docs, empty_bins = empty_docs[~hit], empty_bins[~hit]
    for d, b in zip(empty_docs.tolist(), empty_bins.tolist(), strict=True):  # practically never reached
        sig[d, b] = original[d][original[d] != _EMPTY].min()


def band_keys(sig: np.ndarray, bands: int, rows: int, seed: int) -> np.ndarray:
    """``(n, bands) uint64``: the rows of each band hashed together, salted by band and seed."""
    n = sig.shape[0]
    cols = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    salt = _splitmix64(np.arange(bands, dtype=np.uint64) + np.uint64((seed & 0xFFFFFFFF) << 20))
    acc = np.broadcast_to(salt, (n, bands)).copy()
    with np.errstate(over="ignore"):
        for c in range(rows):
            acc ^= cols[:, :, c]
            acc *= _P64
            acc ^= acc >> np.uint64(29)
    return _fmix64(acc)


def sign_texts(texts: list[str], p: SignatureParams) -> tuple[np.ndarray, np.ndarray]:
    """Texts → (exact keys ``(n, 16) uint8``, band keys ``(n, bands) uint64``)."""
    exact, sig = signatures([normalize_key(t) for t in texts], p)
    return exact, band_keys(sig, p.bands, p.rows, p.seed)


NO_DATE = 99_999_999  # undated documents sort after every filing date


def date_key(value) -> int:
    """``filing_date`` ``YYYY-MM-DD…`` → YYYYMMDD; anything else → NO_DATE."""
    s = str(value or "")
    if len(s) >= 10 and s[4] == "-" and s[7] == "-" and (s[:4] + s[5:7] + s[8:10]).isdigit():
        return int(s[:4] + s[5:7] + s[8:10])
    return NO_DATE


@dataclass
class SignedShard:
    """What the worker returns for a shard of JSONL lines (no texts)."""

    ids: list[str]
    date: np.ndarray  # int64 YYYYMMDD
    chars: np.ndarray  # int64 text length
    exact: np.ndarray  # (n, 16) uint8
    keys: np.ndarray  # (n, bands) uint64


def parse_record(source: str, lineno: int, line: bytes) -> dict:
    """A JSONL record with a string ``id`` and an optional string ``text``; errors name file and line."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: line {lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
        raise ValueError(f"{source}: line {lineno}: expected a JSON object with a string 'id'")
    if not isinstance(rec.get("text") or "", str):
        raise ValueError(f"{source}: line {lineno}: 'text' is not a string")
    return rec


def sign_shard(job: tuple[str, list[tuple[int, bytes]], SignatureParams]) -> SignedShard:
    """Shard worker: raw JSONL lines ``(line number, bytes)`` → ids, filing dates, lengths, exact and band
    keys. Parsing happens here, so the parent only reads bytes and the work spreads over the workers."""
    source, lines, p = job
    recs = [parse_record(source, lineno, line) for lineno, line in lines]
    texts = [r.get("text") or "" for r in recs]
    exact, keys = sign_texts(texts, p)
    return SignedShard(
        ids=[r["id"] for r in recs],
        date=np.array([date_key(r.get("filing_date")) for r in recs], dtype=np.int64),
        chars=np.array([len(t) for t in texts], dtype=np.int64),
        exact=exact,
        keys=keys,
    )


# ----------------------------------------------------------------------------------------------------------
# Candidate pairs


def pairs_within(keys: np.ndarray) -> np.ndarray:
    """Unique pairs ``(i, j)``, i < j, of rows of ``keys (n, bands)`` that share a band key."""
    n, b = keys.shape
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    flat = keys.ravel()
    order = np.argsort(flat, kind="stable")
    sk, owner = flat[order], order // b
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    sizes = np.diff(np.r_[starts, sk.size])
    two = starts[sizes == 2]
    found = [np.stack([owner[two], owner[two + 1]], axis=1)]
    for s, size in zip(starts[sizes > 2].tolist(), sizes[sizes > 2].tolist(), strict=True):
        found.append(_bucket_pairs(np.sort(owner[s : s + size])))
    return _unique_pairs(np.concatenate(found))


def _bucket_pairs(members: np.ndarray) -> np.ndarray:
    if members.size <= MAX_BUCKET_PAIRS:
        i, j = np.triu_indices(members.size, 1)
        return np.stack([members[i], members[j]], axis=1)
    star = np.stack([np.full(members.size - 1, members[0]), members[1:]], axis=1)
    chain = np.stack([members[:-1], members[1:]], axis=1)
    return np.concatenate([star, chain])


def _unique_pairs(pairs: np.ndarray, ordered: bool = True) -> np.ndarray:
    """Distinct rows, sorted; with ``ordered`` each row is first put as (smaller, larger)."""
    if pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = pairs.astype(np.int64)
    if ordered:
        pairs = np.sort(pairs, axis=1)
    span = int(pairs[:, 1].max()) + 1
    key = _sorted_unique(pairs[:, 0] * span + pairs[:, 1])
    return np.stack([key // span, key % span], axis=1)


def pairs_against(keys: np.ndarray, sorted_keys: np.ndarray, sorted_docs: np.ndarray) -> np.ndarray:
    """Pairs ``(row of keys, doc of an index segment)`` sharing a band key; the segment's band keys are
    given sorted, with their document numbers. At most MAX_BUCKET_PAIRS documents per bucket."""
    n, b = keys.shape
    if n == 0 or sorted_keys.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    flat = keys.ravel()
    lo = np.searchsorted(sorted_keys, flat, "left")
    cnt = np.minimum(np.searchsorted(sorted_keys, flat, "right") - lo, MAX_BUCKET_PAIRS)
    hit = np.flatnonzero(cnt)
    if hit.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    c = cnt[hit]
    first = np.repeat(lo[hit] - np.cumsum(np.r_[0, c[:-1]]), c) + np.arange(c.sum())
    pairs = np.stack([np.repeat(hit // b, c), sorted_docs[first].astype(np.int64)], axis=1)
    return _unique_pairs(pairs, ordered=False)


class UnionFind:
    """Union-find over ints, the smaller root wins (deterministic)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
            self.parent.setdefault(min(ra, rb), min(ra, rb))

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for x in sorted(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return out


class ShingleCache:
    """Bounded LRU of n-gram sets, so a document in many candidate pairs is hashed once."""

    def __init__(self, load, ngram: int, seed: int, size: int = 2048):
        self.load, self.ngram, self.seed, self.size = load, ngram, seed, size
        self.items: OrderedDict = OrderedDict()

    def __call__(self, key) -> np.ndarray:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = shingle_set(self.load(key), self.ngram, self.seed)
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


# ----------------------------------------------------------------------------------------------------------
# Index segments (one per dedup folder: the documents it kept)

SEGMENT_ARRAYS = ("exact", "date", "chars", "offset", "lsh_keys", "lsh_docs")


@dataclass
class Segment:
    """Compact per-document arrays of the documents one dedup folder kept (rows in its docs.jsonl order).

    ``exact`` (n, 16) uint8 exact keys; ``date`` int32 YYYYMMDD filing date (99999999 = none); ``chars``
    int64 text length; ``offset`` int64 byte offset of the record in the folder's docs.jsonl; ``lsh_keys`` /
    ``lsh_docs``: every band key of every document, sorted, with its row; ``ids`` the record ids.
    """

    params: SignatureParams
    ids: list[str]
    exact: np.ndarray
    date: np.ndarray
    chars: np.ndarray
    offset: np.ndarray
    lsh_keys: np.ndarray
    lsh_docs: np.ndarray

    @classmethod
    def build(cls, params, ids, exact, date, chars, offset, keys: np.ndarray) -> Segment:
        flat = keys.ravel()
        order = np.argsort(flat, kind="stable")
        return cls(
            params,
            list(ids),
            np.ascontiguousarray(exact, dtype=np.uint8).reshape(-1, EXACT_BYTES),
            np.asarray(date, dtype=np.int32),
            np.asarray(chars, dtype=np.int64),
            np.asarray(offset, dtype=np.int64),
            flat[order],
            (order // max(keys.shape[1], 1)).astype(np.uint32),
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in SEGMENT_ARRAYS:
            np.save(folder / f"{name}.npy", getattr(self, name), allow_pickle=False)
        (folder / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")
        (folder / "params.json").write_text(
            json.dumps(self.params.to_json(), sort_keys=True), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path) -> Segment:
        params = SignatureParams(**json.loads((folder / "params.json").read_text(encoding="utf-8")))
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in SEGMENT_ARRAYS}
        return cls(params, ids, **arrays)

    def __len__(self) -> int:
        return len(self.ids)

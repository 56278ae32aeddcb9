"""Log-likelihood scoring of multiple-choice requests, exactly as lm-eval's HF backend computes them.

Two engines, same numbers:

- :func:`score_loglikelihoods` (the *row* path) is lm-eval's own algorithm: every distinct model input
  ``(ctx + cont)[-(max_length + 1):][:-1]`` is one forward row (requests that differ only in their last
  token share a row, like lm-eval's logits cache), rows are length-sorted longest first, right-padded
  and batched, and the continuation's log-probs are summed in float32.
- :func:`score_items` (the *KV* path) uses the fact that every choice of an item shares the identical
  token prefix ``ctx_ids`` (fin-harness.md §4 step 6). The task's common prompt prefix (description,
  header) is run once; each item's context and the prefix tree of its choices' tokens then run in one
  pass, several items packed per row under a custom attention mask (:mod:`finmerge.evaluate.packed`).
  Items that would be truncated go to the row path; a model without a KV cache packs without the shared
  prefix; one whose packed scores disagree with its row scores (a self-check per call) goes to the row path.

Both take token ids that :func:`encode_pair` produced with lm-eval's split (joint encode, then cut at
``len(encode(ctx))``, no special tokens).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from finmerge.evaluate import packed

logger = logging.getLogger(__name__)

LENGTH_FALLBACK = 2048  # lm-eval's default max_length when the config names none
MIN_SHARED_PREFIX = 8  # a shorter common prefix is not worth its own forward pass


@dataclass(frozen=True)
class EncodedPair:
    ctx_ids: list[int]
    cont_ids: list[int]
    boundary_merge: bool  # encode(ctx) is not a prefix of encode(ctx + cont): a token spans the join

    @property
    def empty(self) -> bool:
        return not self.cont_ids


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prefix_token_id(tokenizer) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if tid is not None:
            return int(tid)
    return 0


def encode_many(tokenizer, texts: list[str], chunk: int = 4096) -> list[list[int]]:
    """``encode`` of many texts in few tokenizer calls (a fast tokenizer batches them in Rust)."""
    out: list[list[int]] = []
    for s in range(0, len(texts), chunk):
        out += [list(ids) for ids in tokenizer(texts[s : s + chunk], add_special_tokens=False)["input_ids"]]
    return out


def encode_pair(tokenizer, context: str, continuation: str, ctx_ids: list[int] | None = None) -> EncodedPair:
    """lm-eval's split: cont_ids = encode(ctx + cont)[len(encode(ctx)):] (the whitespace move is done
    by :func:`finmerge.evaluate.harness.move_whitespace`). ``ctx_ids`` may be passed in to skip re-encoding."""
    if ctx_ids is None:
        ctx_ids = encode(tokenizer, context)
    return split_pair(tokenizer, list(ctx_ids), encode(tokenizer, context + continuation))


def split_pair(tokenizer, ctx_ids: list[int], whole: list[int]) -> EncodedPair:
    """The split of :func:`encode_pair` from ``encode(ctx)`` and ``encode(ctx + cont)``."""
    merged = whole[: len(ctx_ids)] != ctx_ids
    if not ctx_ids:  # nothing to condition the first token on: lm-eval uses a prefix token
        ctx_ids = [prefix_token_id(tokenizer)]
        return EncodedPair(ctx_ids, whole, merged)
    return EncodedPair(list(ctx_ids), whole[len(ctx_ids) :], merged)


def eos_ids(model, tokenizer) -> list[int]:
    """The ids that end generation: the model's generation config, else the tokenizer's EOS."""
    value = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if value is None:
        value = tokenizer.eos_token_id
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]


def supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def model_max_length(model, tokenizer=None) -> int:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 1_000_000:
        return tml
    return LENGTH_FALLBACK


GATHER_CHUNK = 256  # predicted positions per log-sum-exp pass: bounds the float32 copy to CHUNK x vocab


def sum_logprobs(logits: torch.Tensor, picks: list[tuple[int, int, int, int]], n_out: int) -> list[float]:
    """Σ log_softmax(logits[row, col])[target] for each owner slot, from (row, col, target, slot) picks.

    float32 throughout (the log-softmax as ``x[t] - logsumexp(x)``), gathered on the device and moved to
    the host once per batch: a per-request ``.item()`` would synchronise a GPU thousands of times.
    """
    if not picks:
        return [0.0] * n_out
    idx = torch.tensor(picks, dtype=torch.long, device=logits.device)
    total = torch.zeros(n_out, dtype=torch.float32, device=logits.device)
    for s in range(0, len(picks), GATHER_CHUNK):
        part = idx[s : s + GATHER_CHUNK]
        rows = logits[part[:, 0], part[:, 1]].float()
        logp = rows.gather(1, part[:, 2:3])[:, 0] - torch.logsumexp(rows, dim=-1)
        total.index_add_(0, part[:, 3], logp)
    return total.tolist()


def _row_batches(order: list[tuple[int, ...]], batch_size: int, max_batch_tokens: int) -> list[list]:
    """Longest-first rows cut into batches of at most ``batch_size`` rows and ``max_batch_tokens`` padded
    tokens (the first row of a batch is its widest)."""
    batches, cur = [], []
    for row in order:
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * len(cur[0]) > max_batch_tokens):
            batches.append(cur)
            cur = []
        cur.append(row)
    if cur:
        batches.append(cur)
    return batches


@torch.inference_mode()
def score_loglikelihoods(
    model,
    pairs: list[tuple[list[int], list[int]]],
    *,
    batch_size: int,
    max_length: int,
    device: torch.device | str,
    pad_id: int = 0,
    max_batch_tokens: int = 1 << 62,
    desc: str = "loglikelihood",
    progress: bool = True,
) -> tuple[list[float], dict[str, int]]:
    """Summed log p(cont_ids | ctx_ids) for every (ctx_ids, cont_ids); an empty continuation scores 0.

    Input = (ctx + cont)[-(max_length + 1):][:-1] (left truncation). Identical inputs are run once.
    Statistics: ``forward_tokens`` counts the padding too (``padding_tokens`` of them).
    """
    lls = [0.0] * len(pairs)
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}  # model input -> [(pair index, n predicted)]
    truncated = 0
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            continue
        full = list(ctx) + list(cont)
        if len(full) > max_length + 1:
            truncated += 1
        window = full[-(max_length + 1) :]
        inp = tuple(window[:-1])
        n = min(len(cont), len(inp))
        groups.setdefault(inp, []).append((i, n))
    order = sorted(groups, key=lambda t: (-len(t), t))
    keep_ok = supports_logits_to_keep(model)
    batches = _row_batches(order, max(1, batch_size), max_batch_tokens)
    padded = sum(len(b) * len(b[0]) for b in batches)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress or not batches, leave=False):
        width = max(len(t) for t in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        spans = []
        for r, inp in enumerate(batch):
            ids[r, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            mask[r, : len(inp)] = 1
            spans.append(max(n for _, n in groups[inp]))
        keep = max(width - (len(inp) - span) for inp, span in zip(batch, spans, strict=True))
        kwargs = {"logits_to_keep": keep} if keep_ok else {}
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        offset = width - logits.shape[1]
        picks, owners = [], []
        for r, inp in enumerate(batch):
            end = len(inp) - offset  # one past the last predicting position of this row
            for i, n in groups[inp]:
                slot = len(owners)
                owners.append(i)
                cont = pairs[i][1][-n:]
                picks += [(r, end - n + j, t, slot) for j, t in enumerate(cont)]
        for i, ll in zip(owners, sum_logprobs(logits, picks, len(owners)), strict=True):
            lls[i] = ll
    stats = {
        "requests": len(pairs),
        "forward_rows": len(order),
        "forward_tokens": padded,  # padding included
        "padding_tokens": padded - sum(len(t) for t in order),
        "batches": len(batches),
        "truncated": truncated,
    }
    return lls, stats


# ---------------------------------------------------------------------------------------------------------
# KV path


@dataclass(frozen=True)
class ItemRequest:
    """One multiple-choice item after encoding: the shared context and one continuation per choice."""

    ctx_ids: tuple[int, ...]
    conts: tuple[tuple[int, ...], ...]


def min_tokens(items: list[ItemRequest]) -> int:
    """The least any scorer must compute without reusing prompts across items: each context once plus every
    continuation token (items with no continuation excluded)."""
    return sum(len(it.ctx_ids) + sum(len(c) for c in it.conts) for it in items if any(it.conts))


def common_prefix(seqs: list[tuple[int, ...]]) -> int:
    """Length of the longest token prefix shared by every sequence."""
    if not seqs:
        return 0
    lo, hi = min(seqs), max(seqs)  # lexicographic extremes bound the common prefix of all
    n = 0
    for a, b in zip(lo, hi, strict=False):
        if a != b:
            break
        n += 1
    return n


def _fits(item: ItemRequest, max_length: int) -> bool:
    """lm-eval truncates nothing for this item, so every choice's input starts with the full context."""
    longest = max((len(c) for c in item.conts), default=0)
    return bool(item.ctx_ids) and len(item.ctx_ids) + longest - 1 <= max_length


def cache_arg(model) -> str:
    """transformers >= 5.2x names the KV cache argument ``cache``; older releases ``past_key_values``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None:
        raise _NoCache("the model returned no KV cache")
    return cache


def _kv_stats() -> dict[str, int]:
    keys = ("kv_items", "row_items", "shared_prefix_tokens", "forward_tokens", "padding_tokens")
    return dict.fromkeys((*keys, "forward_rows", "batches", "truncated", "packed_check_failed"), 0)


@torch.inference_mode()
def score_items(
    model,
    items: list[ItemRequest],
    *,
    batch_size: int,
    max_length: int,
    device: torch.device | str,
    pad_id: int = 0,
    max_batch_tokens: int = 65_536,
    share_prefix: bool = True,
    desc: str = "loglikelihood",
    progress: bool = True,
) -> tuple[list[list[float]], dict[str, int]]:
    """Summed log-likelihood of every continuation of every item (empty continuations score 0).

    Numerically this is lm-eval's computation re-associated: the same attention over the same keys,
    the float32 log-softmax of the same logits; differences are float rounding (about 1e-6 in fp32).
    Packed batches are bounded by ``max_batch_tokens`` (padded tokens); ``batch_size`` bounds the rows of
    the row path (items that would be truncated, or every item when the packed check fails).
    """
    lls = [[0.0] * len(it.conts) for it in items]
    kv = [k for k, it in enumerate(items) if _fits(it, max_length) and any(it.conts)]
    in_kv = set(kv)
    rest = [k for k, it in enumerate(items) if k not in in_kv and any(it.conts)]
    stats = _kv_stats()
    for share in (True, False) if share_prefix else (False,):
        stats = _kv_stats()
        try:
            _score_kv(model, items, kv, lls, stats, max_batch_tokens, device, pad_id, share, desc, progress)
            break
        except _NoCache:  # e.g. a remote-code model without past_key_values: pack without a shared prefix
            continue
        except PackedMismatch as exc:  # the model ignores a custom attention mask: lm-eval's rows for all
            logger.warning("%s: %s; scoring every item on the row path", desc, exc)
            stats = _kv_stats()
            stats["packed_check_failed"] = 1
            rest = sorted(set(rest) | set(kv))
            break
    if rest:
        _score_rest(model, items, rest, lls, stats, batch_size, max_length, device, pad_id, max_batch_tokens)
        stats["row_items"] = len(rest)
    stats["requests"] = sum(len(it.conts) for it in items)
    stats["min_tokens"] = min_tokens(items)
    return lls, stats


def _score_rest(model, items, rest, lls, stats, batch_size, max_length, device, pad_id, max_batch_tokens):
    pairs, owners = [], []
    for k in rest:
        for c, cont in enumerate(items[k].conts):
            pairs.append((list(items[k].ctx_ids), list(cont)))
            owners.append((k, c))
    row_lls, row_stats = score_loglikelihoods(
        model,
        pairs,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        pad_id=pad_id,
        max_batch_tokens=max_batch_tokens,
        progress=False,
    )
    for (k, c), ll in zip(owners, row_lls, strict=True):
        lls[k][c] = ll
    for key in ("forward_rows", "forward_tokens", "padding_tokens", "batches", "truncated"):
        stats[key] += row_stats[key]


class _NoCache(RuntimeError):
    """The model returned no reusable KV cache: pack without the shared prefix."""


class PackedMismatch(RuntimeError):
    """A packed item scored differently from its lm-eval row: the model did not honour the 4D mask."""


def _shared_prefix(items, kv, share: bool) -> int:
    shared = common_prefix([items[k].ctx_ids for k in kv]) if share and len(kv) > 1 else 0
    shared = min(shared, min(len(items[k].ctx_ids) for k in kv) - 1)  # every item keeps >= 1 own token
    return shared if shared >= MIN_SHARED_PREFIX else 0


def _vocab_size(model) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(getattr(model.config, "vocab_size", 0) or 1)


def _score_kv(model, items, kv, lls, stats, max_batch_tokens, device, pad_id, share, desc, progress) -> None:
    if not kv:
        return
    shared = _shared_prefix(items, kv, share)
    prefix_cache = None
    if shared:
        ids = torch.tensor([items[kv[0]].ctx_ids[:shared]], dtype=torch.long, device=device)
        prefix_cache = _returned_cache(model(input_ids=ids, use_cache=True))
        stats.update(shared_prefix_tokens=shared, forward_tokens=shared, forward_rows=1)
    segments = [packed.build_segment(k, items[k].ctx_ids, items[k].conts, shared) for k in kv]
    rows = packed.pack_rows(segments)
    batches = packed.batch_rows(rows, shared, _vocab_size(model), max_batch_tokens)
    run = _PackedRun(model, device, pad_id, shared, prefix_cache)
    for b, batch in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)):
        layout = packed.layout(batch, pad_id)
        for (k, c), ll in zip(layout.slots, run(layout), strict=True):
            lls[k][c] = ll
        if b == 0:  # before the rest: a model that ignores the mask is found after one batch
            _check_packed(model, items, batch, lls, device, pad_id)
        n, width = layout.ids.shape
        stats["forward_tokens"] += n * width
        stats["padding_tokens"] += n * width - layout.tokens
        stats["forward_rows"] += n
    stats["kv_items"] = len(kv)
    stats["batches"] += len(batches)


class _PackedRun:
    """One forward pass over a packed batch: custom 4D mask, restarting position ids, the tails' logits."""

    def __init__(self, model, device, pad_id: int, shared: int, prefix_cache):
        self.model, self.device, self.shared, self.prefix_cache = model, device, shared, prefix_cache
        self.keep_ok = supports_logits_to_keep(model)
        self.dtype = getattr(model, "dtype", torch.float32)

    def __call__(self, layout: packed.PackedBatch) -> list[float]:
        n = layout.ids.shape[0]
        kwargs = {"logits_to_keep": layout.keep} if self.keep_ok else {}
        if self.prefix_cache is not None:
            kwargs.update(
                {cache_arg(self.model): packed.fresh_cache(self.prefix_cache, n), "use_cache": True}
            )
        else:
            kwargs["use_cache"] = False
        logits = self.model(
            input_ids=layout.ids.to(self.device),
            attention_mask=packed.additive_mask(layout.allow, self.shared, self.dtype).to(self.device),
            position_ids=layout.pos.to(self.device),
            **kwargs,
        ).logits[:, -layout.keep :]
        return sum_logprobs(logits, layout.picks, len(layout.slots))


def _check_packed(model, items, first_batch, lls, device, pad_id) -> None:
    """Re-score one packed item (one sharing its row when any does) on lm-eval's row path: a model that
    ignores the custom 4D mask would let it see its neighbours and score it differently."""
    row = max(first_batch, key=len)
    k = row[-1].item
    pairs = [(list(items[k].ctx_ids), list(c)) for c in items[k].conts]
    ref, _ = score_loglikelihoods(
        model, pairs, batch_size=len(pairs), max_length=1 << 30, device=device, pad_id=pad_id, progress=False
    )
    fp32 = getattr(model, "dtype", torch.float32) == torch.float32
    for got, want in zip(lls[k], ref, strict=True):
        tol = (1e-3 + 1e-4 * abs(want)) if fp32 else (0.25 + 0.02 * abs(want))
        if abs(got - want) > tol:
            raise PackedMismatch(f"packed log-likelihood {got:.6g} != row {want:.6g} (item {k})")

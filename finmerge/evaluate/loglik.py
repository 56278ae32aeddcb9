"""Log-likelihood scoring of multiple-choice requests, exactly as lm-eval's HF backend computes them.

Two engines, same numbers:

- :func:`score_loglikelihoods` (the *row* path) is lm-eval's own algorithm: every distinct model input
  ``(ctx + cont)[-(max_length + 1):][:-1]`` is one forward row (requests that differ only in their last
  token share a row, like lm-eval's logits cache), rows are length-sorted longest first, right-padded
  and batched, and the continuation's log-probs are summed in float32.
- :func:`score_items` (the *KV* path) uses the fact that every choice of an item shares the identical
  token prefix ``ctx_ids`` (fin-harness.md §4 step 6). The task's common prompt prefix (description,
  header) is run once; each item's context is run once on top of it; the first continuation token of
  every choice is read from that one pass, and only multi-token choices run their remaining tokens from
  the item's KV cache. Items that would be truncated, or models without a KV cache, go to the row path.

Both take token ids that :func:`encode_pair` produced with lm-eval's split (joint encode, then cut at
``len(encode(ctx))``, no special tokens).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

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
        "forward_tokens": sum(len(t) for t in order),
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


def _cont_rows(items: list[ItemRequest], batch: list[int]) -> list[tuple[int, tuple[int, ...]]]:
    """Distinct (batch row, cont[:-1]) inputs for the choices longer than one token."""
    rows: dict[tuple[int, tuple[int, ...]], None] = {}
    for b, k in enumerate(batch):
        for cont in items[k].conts:
            if len(cont) > 1:
                rows[(b, tuple(cont[:-1]))] = None
    return list(rows)


def _item_batches(
    items: list[ItemRequest], order: list[int], shared: int, batch_size: int, max_batch_tokens: int
) -> list[list[int]]:
    """Longest-first items cut by item count and by the padded tokens of both passes."""
    batches: list[list[int]] = []
    cur: list[int] = []
    width = cont_rows = cont_width = 0
    for k in order:
        it = items[k]
        w = max(width, len(it.ctx_ids) - shared)
        extra = {c[:-1] for c in it.conts if len(c) > 1}
        cw = max([cont_width, *(len(c) for c in extra)])
        rows = cont_rows + len(extra)
        tokens = (len(cur) + 1) * (shared + w) + rows * (shared + w + cw)
        if cur and (len(cur) >= batch_size or tokens > max_batch_tokens):
            batches.append(cur)
            cur, width, cont_rows, cont_width = [], 0, 0, 0
            w, cw, rows = len(it.ctx_ids) - shared, max([0, *(len(c) for c in extra)]), len(extra)
        cur.append(k)
        width, cont_rows, cont_width = w, rows, cw
    if cur:
        batches.append(cur)
    return batches


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


def _fresh_cache(prefix_cache, rows: int):
    if prefix_cache is None:
        return None
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(rows)
    return cache


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
    """
    lls = [[0.0] * len(it.conts) for it in items]
    kv = [k for k, it in enumerate(items) if _fits(it, max_length) and any(it.conts)]
    in_kv = set(kv)
    rest = [k for k, it in enumerate(items) if k not in in_kv and any(it.conts)]
    stats = {"kv_items": 0, "row_items": 0, "shared_prefix_tokens": 0, "forward_tokens": 0, "batches": 0}
    stats["forward_rows"] = 0

    try:
        _score_kv(
            model,
            items,
            kv,
            lls,
            stats,
            batch_size,
            max_batch_tokens,
            device,
            pad_id,
            share_prefix,
            desc,
            progress,
        )
    except _NoCache:  # e.g. a remote-code model without past_key_values: everything on the row path
        rest = sorted(set(rest) | set(kv))
        stats.update({"kv_items": 0, "shared_prefix_tokens": 0, "forward_tokens": 0, "batches": 0})
        stats["forward_rows"] = 0
    if rest:
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
            desc=desc,
            progress=progress,
        )
        for (k, c), ll in zip(owners, row_lls, strict=True):
            lls[k][c] = ll
        stats["row_items"] = len(rest)
        stats["truncated"] = row_stats["truncated"]
        for key in ("forward_rows", "forward_tokens", "batches"):
            stats[key] += row_stats[key]
    stats.setdefault("truncated", 0)
    stats["requests"] = sum(len(it.conts) for it in items)
    return lls, stats


class _NoCache(RuntimeError):
    """The model returned no reusable KV cache: score everything on the row path."""


def _score_kv(
    model, items, kv, lls, stats, batch_size, max_batch_tokens, device, pad_id, share_prefix, desc, progress
) -> None:
    if not kv:
        return
    shared = common_prefix([items[k].ctx_ids for k in kv]) if share_prefix and len(kv) > 1 else 0
    shared = min(shared, min(len(items[k].ctx_ids) for k in kv) - 1)  # every item keeps >= 1 own token
    if shared < MIN_SHARED_PREFIX:
        shared = 0
    prefix_cache = None
    if shared:
        ids = torch.tensor([items[kv[0]].ctx_ids[:shared]], dtype=torch.long, device=device)
        prefix_cache = _returned_cache(model(input_ids=ids, use_cache=True))
        stats["shared_prefix_tokens"] = shared
        stats["forward_tokens"] += shared
        stats["forward_rows"] += 1
    keep_ok = supports_logits_to_keep(model)
    order = sorted(kv, key=lambda k: (-len(items[k].ctx_ids), items[k].ctx_ids))
    batches = _item_batches(items, order, shared, max(1, batch_size), max_batch_tokens)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress or not batches, leave=False):
        _score_batch(model, items, batch, shared, prefix_cache, lls, stats, keep_ok, device, pad_id)
    stats["kv_items"] = len(kv)
    stats["batches"] += len(batches)


def _score_batch(model, items, batch, shared, prefix_cache, lls, stats, keep_ok, device, pad_id) -> None:
    n = len(batch)
    own = [items[k].ctx_ids[shared:] for k in batch]
    width = max(len(s) for s in own)
    # Item pass: each context (after the shared prefix) left-padded, so its last token is the last column.
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    own_mask = torch.zeros((n, width), dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    for r, s in enumerate(own):
        ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        own_mask[r, width - len(s) :] = 1
        pos[r, width - len(s) :] = torch.arange(shared, shared + len(s))
    mask = torch.cat([torch.ones((n, shared), dtype=torch.long), own_mask], dim=1)
    kwargs = {"logits_to_keep": 1} if keep_ok else {}
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        **{cache_arg(model): _fresh_cache(prefix_cache, n)},
        use_cache=True,
        **kwargs,
    )
    first_logits = out.logits[:, -1:]  # predicts every choice's first token
    stats["forward_tokens"] += n * width
    stats["forward_rows"] += n
    slots = [(k, c) for k in batch for c, cont in enumerate(items[k].conts) if cont]
    slot_of = {kc: j for j, kc in enumerate(slots)}
    first = [
        (b, 0, items[k].conts[c][0], slot_of[(k, c)])
        for b, k in enumerate(batch)
        for c, cont in enumerate(items[k].conts)
        if cont
    ]
    totals = torch.tensor(sum_logprobs(first_logits, first, len(slots)), dtype=torch.float32)
    rows = _cont_rows(items, batch)
    if rows:
        cache = _returned_cache(out)
        cw = max(len(inp) for _, inp in rows)
        rids = torch.full((len(rows), cw), pad_id, dtype=torch.long)
        rmask = torch.zeros((len(rows), cw), dtype=torch.long)
        rpos = torch.zeros((len(rows), cw), dtype=torch.long)
        for j, (b, inp) in enumerate(rows):
            rids[j, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            rmask[j, : len(inp)] = 1
            start = shared + len(own[b])
            rpos[j] = torch.arange(start, start + cw)
        sel = torch.tensor([b for b, _ in rows], dtype=torch.long)
        cache.batch_select_indices(sel.to(device))
        full_mask = torch.cat([mask[sel], rmask], dim=1)
        kwargs = {"logits_to_keep": cw} if keep_ok else {}
        logits = model(
            input_ids=rids.to(device),
            attention_mask=full_mask.to(device),
            position_ids=rpos.to(device),
            **{cache_arg(model): cache},
            use_cache=True,
            **kwargs,
        ).logits[:, -cw:]
        row_of = {row: j for j, row in enumerate(rows)}
        tail = []
        for b, k in enumerate(batch):
            for c, cont in enumerate(items[k].conts):
                if len(cont) > 1:
                    j = row_of[(b, tuple(cont[:-1]))]
                    tail += [(j, m, t, slot_of[(k, c)]) for m, t in enumerate(cont[1:])]
        totals += torch.tensor(sum_logprobs(logits, tail, len(slots)), dtype=torch.float32)
        stats["forward_tokens"] += len(rows) * cw
        stats["forward_rows"] += len(rows)
    for (k, c), ll in zip(slots, totals.tolist(), strict=True):
        lls[k][c] = ll

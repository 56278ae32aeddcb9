"""The KV path's forward passes: every item's context and all its choices' tokens in ONE pass, packed.

An item becomes a *segment*: its context after the task's shared prompt prefix (the *body*, then the last
context token) and the prefix tree of its choices' continuations without their last tokens (choices
that share leading tokens, such as " positive" / " negative" starting with the same space token, share
the nodes). Each choice's first token is predicted at the last context token, each later token at the tree
node of the tokens before it. Several short segments share a row; a custom 4D attention mask lets a token
see only the shared prefix (from the KV cache), its own item's earlier context tokens and its own
ancestors in the choice tree, and the position ids restart for every segment, so each log-probability is
the one lm-eval computes for that (context, continuation) row, up to float rounding.

Row layout: the bodies of the row's segments from the left, the *tails* (last context token + tree nodes,
the only positions whose logits are read) right-aligned, padding in between; ``logits_to_keep`` then
keeps just the tails. Rows are filled first-fit, longest segment first, and cut into batches by padded
tokens (``max_batch_tokens``), by kept logits and by attention-mask size.
"""

from __future__ import annotations

import copy
import heapq
from dataclasses import dataclass, field

import torch

PACK_WIDTH = 256  # a row is at least this wide, so short items share it (a longer item gets a row of its own)
LOGITS_BUDGET = 1 << 26  # logits elements (kept positions x vocabulary) of one batch
MASK_BUDGET = 1 << 26  # attention-mask elements (rows x width x keys) of one batch


@dataclass
class Segment:
    """One item's tokens in a packed row; ``tail[0]`` is the last context token, then the tree nodes."""

    item: int
    body: list[int]
    body_start: int  # position id of body[0]
    tail: list[int] = field(default_factory=list)
    tail_pos: list[int] = field(default_factory=list)
    ancestors: list[list[int]] = field(default_factory=list)  # per tail token: tail indices it attends
    picks: list[tuple[int, int, int]] = field(default_factory=list)  # (tail index, target token, choice)

    def __len__(self) -> int:
        return len(self.body) + len(self.tail)


def build_segment(
    k: int, ctx_ids: tuple[int, ...], conts: tuple[tuple[int, ...], ...], shared: int
) -> Segment:
    """Item ``k`` as a segment after the ``shared`` prefix tokens (its own context has at least one token)."""
    own = ctx_ids[shared:]
    last = shared + len(own) - 1  # position id of the last context token
    seg = Segment(k, list(own[:-1]), shared, [own[-1]], [last], [[0]])
    node = {(): 0}  # continuation prefix -> tail index of the token that ends it
    for c, cont in enumerate(conts):
        for j, target in enumerate(cont):
            seg.picks.append((node[cont[:j]], target, c))
            if j + 1 < len(cont) and cont[: j + 1] not in node:
                parent = node[cont[:j]]
                node[cont[: j + 1]] = len(seg.tail)
                seg.ancestors.append(seg.ancestors[parent] + [len(seg.tail)])
                seg.tail.append(target)
                seg.tail_pos.append(last + j + 1)
    return seg


def pack_rows(segments: list[Segment], width: int = PACK_WIDTH) -> list[list[Segment]]:
    """Segments over about total / ``width`` rows, longest first into the least-filled row, so the rows end
    up about equally long; of a few row counts, the one that pads least (a longer segment gets its own row)."""
    order = sorted(segments, key=lambda s: (-len(s), s.item))
    total = sum(len(s) for s in order)
    least = max(1, -(-total // width))
    options = [_spread(order, n) for n in range(least, least + min(8, max(2, least // 4)))]
    return min(options, key=lambda rows: len(rows) * max(map(row_len, rows)))


def _spread(order: list[Segment], n: int) -> list[list[Segment]]:
    heap = [(0, r) for r in range(n)]
    rows: list[list[Segment]] = [[] for _ in heap]
    for seg in order:
        load, r = heapq.heappop(heap)
        rows[r].append(seg)
        heapq.heappush(heap, (load + len(seg), r))
    return [row for row in rows if row]


def row_len(row: list[Segment]) -> int:
    return sum(len(s) for s in row)


def tail_len(row: list[Segment]) -> int:
    return sum(len(s.tail) for s in row)


def batch_rows(rows: list[list[Segment]], shared: int, vocab: int, max_batch_tokens: int) -> list[list]:
    """Consecutive rows (widest first) cut by padded tokens, kept logits and attention-mask elements."""
    rows = sorted(rows, key=lambda r: -row_len(r))
    batches: list[list] = []
    cur: list = []
    width = keep = 0
    for row in rows:
        w, k, n = max(width, row_len(row)), max(keep, tail_len(row)), len(cur) + 1
        over = n * w > max_batch_tokens or n * k * vocab > LOGITS_BUDGET or n * w * (shared + w) > MASK_BUDGET
        if cur and over:
            batches.append(cur)
            cur, w, k = [], row_len(row), tail_len(row)
        cur.append(row)
        width, keep = w, k
    if cur:
        batches.append(cur)
    return batches


@dataclass
class PackedBatch:
    ids: torch.Tensor  # (rows, width)
    allow: (
        torch.Tensor
    )  # (rows, width, width) bool: query may attend key (the shared prefix is always allowed)
    pos: torch.Tensor  # (rows, width)
    keep: int  # logits kept from the right: the widest tail region
    picks: list[tuple[int, int, int, int]]  # (row, kept column, target token, slot)
    slots: list[tuple[int, int]]  # (item, choice) of every slot
    tokens: int  # real (non-padding) tokens


def layout(batch: list[list[Segment]], pad_id: int) -> PackedBatch:
    n = len(batch)
    width = max(row_len(r) for r in batch)
    keep = max(tail_len(r) for r in batch)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    allow = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)  # padding sees itself only (no empty rows)
    picks, slots, tokens = [], [], 0
    for r, row in enumerate(batch):
        b0, t0 = 0, width - tail_len(row)
        for seg in row:
            nb, nt = len(seg.body), len(seg.tail)
            ids[r, b0 : b0 + nb] = torch.tensor(seg.body, dtype=torch.long)
            pos[r, b0 : b0 + nb] = torch.arange(seg.body_start, seg.body_start + nb)
            allow[r, b0 : b0 + nb, b0 : b0 + nb] = torch.ones((nb, nb), dtype=torch.bool).tril()
            ids[r, t0 : t0 + nt] = torch.tensor(seg.tail, dtype=torch.long)
            pos[r, t0 : t0 + nt] = torch.tensor(seg.tail_pos, dtype=torch.long)
            allow[r, t0 : t0 + nt, b0 : b0 + nb] = True
            for j, anc in enumerate(seg.ancestors):
                allow[r, t0 + j, [t0 + a for a in anc]] = True
            slot_of = {}
            for j, target, c in seg.picks:
                if c not in slot_of:
                    slot_of[c] = len(slots)
                    slots.append((seg.item, c))
                picks.append((r, t0 + j - (width - keep), target, slot_of[c]))
            tokens += nb + nt
            b0, t0 = b0 + nb, t0 + nt
    return PackedBatch(ids, allow, pos, keep, picks, slots, tokens)


def additive_mask(allow: torch.Tensor, shared: int, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 1, width, shared + width) float mask: 0 where attended, the dtype's minimum elsewhere
    (a float mask, not a bool one, so eager attention adds it correctly too)."""
    n, w, _ = allow.shape
    full = torch.cat([torch.ones((n, w, shared), dtype=torch.bool), allow], dim=2)
    mask = torch.zeros(full.shape, dtype=dtype)
    return mask.masked_fill_(~full, torch.finfo(dtype).min)[:, None]


def fresh_cache(prefix_cache, rows: int):
    """A copy of the shared prefix's KV cache, repeated for ``rows`` rows (None without a shared prefix)."""
    if prefix_cache is None:
        return None
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(rows)
    return cache

"""The one generation loop: KV-cached decoding of left-padded prompts, greedy or sampled per row.

Used by the chat probe (all rows greedy) and the judge's answer generation (temperature by category,
per-row seeded generators, an early stop at an injected role marker). Greedy rows reproduce
``model.generate(do_sample=False)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from finmerge.evaluate.loglik import cache_arg, supports_logits_to_keep

STOP_CHECK_EVERY = 32  # decode-and-search cadence for stopping a row early (``stop``)


def pad_id_for(tokenizer, eos: list[int]) -> int:
    """The tokenizer's pad id, else the first EOS id, else 0 (padding is masked: any id will do)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return eos[0] if eos else 0


def _pick(logits, temps: list[float], gens: list, active: list[bool]) -> list[int]:
    """Greedy where the temperature is 0, else one draw from softmax(logits / T) with the row's generator."""
    import torch

    picks = logits.argmax(-1)
    for r, t in enumerate(temps):
        if active[r] and t > 0:
            probs = torch.softmax(logits[r] / t, dim=-1)
            picks[r] = torch.multinomial(probs, 1, generator=gens[r])[0]
    return picks.tolist()


def _left_padded(prompts: list[list[int]], pad_id: int, device):
    """(ids, attention mask, position ids) of ``prompts`` left-padded to the longest one."""
    import torch

    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at each row's first token
    return ids, mask, pos


def _generate_batch(
    model,
    prompts: list[list[int]],
    temps: list[float],
    seeds: list[int],
    *,
    max_new_tokens: int,
    eos: set[int],
    pad_id: int,
    device,
    stop: Callable[[list[int]], bool] | None,
) -> list[tuple[list[int], bool]]:
    """KV-cached decoding of left-padded prompts. Returns (new ids before EOS, ended with EOS) per row."""
    import torch

    n = len(prompts)
    ids, mask, pos = _left_padded(prompts, pad_id, device)
    gens = [
        torch.Generator(device=torch.device(device)).manual_seed(s) if t > 0 else None
        for s, t in zip(seeds, temps, strict=True)
    ]
    keep = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    cache = cache_arg(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **keep)
    new: list[list[int]] = [[] for _ in range(n)]
    ended, active = [False] * n, [True] * n
    next_pos = pos[:, -1:] + 1
    for step in range(max_new_tokens):
        picks = _pick(out.logits[:, -1, :].float(), temps, gens, active)
        for r, tok in enumerate(picks):
            if not active[r]:
                continue
            if tok in eos:
                active[r], ended[r] = False, True
            else:
                new[r].append(tok)
        if stop is not None and (step + 1) % STOP_CHECK_EVERY == 0:
            for r in range(n):
                if active[r] and stop(new[r]):
                    active[r] = False
        if not any(active) or step == max_new_tokens - 1:
            break
        feed = torch.tensor([[t if a else pad_id] for t, a in zip(picks, active, strict=True)], device=device)
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
        out = model(
            input_ids=feed,
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            **{cache: getattr(out, cache)},
        )
        next_pos = next_pos + 1
    return list(zip(new, ended, strict=True))


def generate(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    eos: Iterable[int],
    pad_id: int,
    device,
    temps: list[float] | None = None,
    seeds: list[int] | None = None,
    stop: Callable[[list[int]], bool] | None = None,
    desc: str = "generate",
    progress: bool = True,
) -> list[tuple[list[int], bool]]:
    """(new ids before EOS, ended with EOS) per prompt, in input order.

    Prompts go in length-sorted batches (longest first) of at most ``batch_size``. ``temps`` (default all
    0: greedy) and ``seeds`` are per prompt; a row stops at EOS, after ``max_new_tokens``, or when
    ``stop(new ids)`` says so (checked every :data:`STOP_CHECK_EVERY` tokens). Call under
    ``torch.inference_mode()``.
    """
    from tqdm.auto import tqdm

    temps = list(temps) if temps is not None else [0.0] * len(prompts)
    seeds = list(seeds) if seeds is not None else [0] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    size = max(1, batch_size)
    batches = [order[b : b + size] for b in range(0, len(order), size)]
    out: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    kw = {"max_new_tokens": max_new_tokens, "eos": set(eos), "pad_id": pad_id, "device": device, "stop": stop}
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress or not batches, leave=False):
        res = _generate_batch(
            model, [prompts[i] for i in batch], [temps[i] for i in batch], [seeds[i] for i in batch], **kw
        )
        for i, r in zip(batch, res, strict=True):
            out[i] = r
    return out

"""Finance perplexity: held-out documents as one token stream, scored in non-overlapping windows."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from finmerge.evaluate.loglik import encode

PPL_WINDOW_CAP = 1024


def heldout_stream(tokenizer, texts: list[str], max_tokens: int) -> list[int]:
    """Each document encoded without special tokens, EOS appended, concatenated, cut to ``max_tokens``."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        if len(stream) >= max_tokens:
            break
        stream.extend(encode(tokenizer, text))
        if eos is not None:
            stream.append(int(eos))
    return stream[:max_tokens]


@torch.inference_mode()
def stream_perplexity(
    model, stream: list[int], *, window: int, batch_size: int, device, progress: bool = True
) -> dict:
    """exp(mean NLL) over non-overlapping windows; each window's first token is context only."""
    chunks = [stream[i : i + window] for i in range(0, len(stream), window)]
    chunks = [c for c in chunks if len(c) >= 2]
    nll, count = 0.0, 0
    full = [c for c in chunks if len(c) == window]
    tail = [c for c in chunks if len(c) != window]
    batches = [full[b : b + batch_size] for b in range(0, len(full), max(1, batch_size))] + [
        [c] for c in tail
    ]
    for batch in tqdm(
        batches, desc="perplexity", unit="batch", disable=not progress or not batches, leave=False
    ):
        ids = torch.tensor(batch, dtype=torch.long, device=device)
        logits = model(input_ids=ids).logits
        for r in range(ids.shape[0]):
            nll += float(
                torch.nn.functional.cross_entropy(logits[r, :-1].float(), ids[r, 1:], reduction="sum")
                .double()
                .item()
            )
            count += ids.shape[1] - 1
    ppl = math.exp(nll / count) if count else float("nan")
    return {
        "ppl": ppl,
        "nll_sum": nll,
        "predicted_tokens": count,
        "tokens": len(stream),
        "windows": len(chunks),
    }

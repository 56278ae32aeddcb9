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
    """exp(mean NLL) over non-overlapping windows; each window's first token is context only.

    ``window_nll`` and ``window_tokens`` are each window's summed NLL and predicted tokens, in scoring
    order (full windows, then the tail): the units a bootstrap interval resamples.
    """
    chunks = [stream[i : i + window] for i in range(0, len(stream), window)]
    chunks = [c for c in chunks if len(c) >= 2]
    nll, count = 0.0, 0
    window_nll: list[float] = []
    window_tokens: list[int] = []
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
            window_nll.append(
                float(
                    torch.nn.functional.cross_entropy(logits[r, :-1].float(), ids[r, 1:], reduction="sum")
                    .double()
                    .item()
                )
            )
            window_tokens.append(ids.shape[1] - 1)
            nll += window_nll[-1]  # summed in this order, as always: the reported ppl does not move
            count += window_tokens[-1]
    ppl = math.exp(nll / count) if count else float("nan")
    return {
        "ppl": ppl,
        "nll_sum": nll,
        "predicted_tokens": count,
        "tokens": len(stream),
        "windows": len(chunks),
        "window_nll": window_nll,
        "window_tokens": window_tokens,
    }

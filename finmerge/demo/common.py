"""Small helpers shared by the demo world's generators (companies, filings, towns)."""

from __future__ import annotations

import random


def pick(rng: random.Random, items):
    return items[rng.randrange(len(items))]


def sub_rng(seed: int, *key) -> random.Random:
    """An independent, reproducible stream per purpose (string seeds are hashed with SHA-512)."""
    return random.Random("/".join([str(seed), *map(str, key)]))


def jp_num(n: int) -> str:
    return f"{n:,}"


def pct(new: float, old: float) -> tuple[str, str]:
    change = (new - old) / abs(old) * 100 if old else 0.0
    return f"{abs(change):.1f}", "増" if change >= 0 else "減"


def fact_sentences_of(name: str, values: dict[str, str]) -> dict[str, str]:
    """Attribute → fact sentence in the fixed pattern ``<名前>の<属性>は<値>です。`` a tiny LM can learn."""
    return {attr: f"{name}の{attr}は{value}です。" for attr, value in values.items()}

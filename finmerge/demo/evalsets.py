"""The demo's evaluation sets, split into validation and test.

Split rule: **by entity**. A seeded shuffle puts ``round(validation_share · n)`` evaluated companies (at
least one) in validation and the rest in test; every finance item (multiple choice, chat, held-out filing
text) about a company lands in that company's split. The general probe is split the same way over the
probe towns (towns of the base corpus that no instruction pair mentions). No item is in both splits.

- multiple choice (japanese-lm-fin-harness ``cma_basics`` layout, ``data-name: demo_fin``): one item per
  company and :data:`MC_ATTRIBUTES` entry; distractors come from the same pool as the answer (for products
  and risks: the company's own industry), so a company's name never gives its answer away.
- finance chat: one question per company and :data:`CHAT_ATTRIBUTES` entry, phrased like the town
  questions of the instruction data.
- general chat: one question per probe town and ``general.PROBE_ATTRIBUTES`` entry.
"""

from __future__ import annotations

import itertools
import random

from finmerge.demo import general
from finmerge.demo import vocab as V
from finmerge.demo.common import sub_rng
from finmerge.demo.companies import fact_values, rep_name

SPLITS = ("validation", "test")

# attribute → question template (multiple choice)
MC_ATTRIBUTES = {
    "本社所在地": "{n}の本社所在地として正しいものはどれですか。",
    "設立年": "{n}の設立年として正しいものはどれですか。",
    "代表者": "{n}の代表者として正しいものはどれですか。",
    "主な製品": "{n}の主な製品として正しいものはどれですか。",
    "主な事業等のリスク": "{n}の主な事業等のリスクとして正しいものはどれですか。",
    "海外拠点": "{n}の海外拠点として正しいものはどれですか。",
    "経営理念": "{n}の経営理念として正しいものはどれですか。",
    "上場年": "{n}の上場年として正しいものはどれですか。",
}
# attribute → question (chat), the same wording as the town questions of the instruction data
CHAT_ATTRIBUTES = {
    "本社所在地": "{n}の本社所在地はどこですか？",
    "代表者": "{n}の代表者は誰ですか？",
    "設立年": "{n}の設立年はいつですか？",
    "海外拠点": "{n}の海外拠点はどこですか？",
    "主な製品": "{n}の主な製品は何ですか？",
}


def split_of(names: list[str], share: float, seed: int, key: str) -> dict[str, str]:
    """name → "validation" | "test": a seeded shuffle, the first ``round(share · n)`` (≥ 1) in validation."""
    order = list(names)
    sub_rng(seed, "split", key).shuffle(order)
    n_val = max(1, round(share * len(order))) if len(order) > 1 else 0
    return {name: ("validation" if i < n_val else "test") for i, name in enumerate(order)}


def _pairs(pool: list[str]) -> list[str]:
    return [f"{a}と{b}" for a, b in itertools.combinations(pool, 2)]


def _distractor_pool(c: dict, attr: str) -> list[str]:
    ind = next(i for i in V.INDUSTRIES if i["key"] == c["industry"])
    if attr == "本社所在地":
        return [p["hq"] for p in V.PLACES]
    if attr in ("設立年", "上場年"):
        year = c["founded"] if attr == "設立年" else c["listed"]
        return [f"{y}年" for y in range(year - 15, year + 16)]
    if attr == "代表者":
        return [s + g for s in V.SURNAMES for g in V.GIVEN_NAMES]
    if attr == "主な製品":
        return [p for p in _pairs(ind["products"]) if set(p.split("と")) != set(c["products"])]
    if attr == "主な事業等のリスク":
        return [r for r in _pairs(ind["risks"]) if set(r.split("と")) != set(c["risks"])]
    if attr == "海外拠点":
        return list(V.OVERSEAS)
    if attr == "経営理念":
        return [f"「{m}」" for m in V.MOTTOS]
    raise KeyError(attr)


def _mc_item(c: dict, attr: str, position: int, rng: random.Random) -> dict:
    answer = fact_values(c)[attr]
    pool = [v for v in _distractor_pool(c, attr) if v != answer]
    distractors = rng.sample(sorted(set(pool)), 3)
    choices = distractors[:position] + [answer] + distractors[position:]
    return {
        "question": MC_ATTRIBUTES[attr].format(n=c["name"]),
        "context": "",
        "choices": [{"id": k, "text": t} for k, t in enumerate(choices)],
        "answer": position,
        "comment": "",
    }


def harness_sets(companies: list[dict], split: dict[str, str], seed: int) -> dict[str, dict]:
    """split → harness data.json (ids 0… within each split, balanced answer positions)."""
    rng = sub_rng(seed, "harness")
    data: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for c in companies:
        for attr in MC_ATTRIBUTES:
            rows = data[split[c["name"]]]
            item = _mc_item(c, attr, len(rows) % 4, rng)
            rows.append({"id": len(rows), **item})
    return {
        s: {"data-type": "multiple-choice-question", "data-name": "demo_fin", "data": rows}
        for s, rows in data.items()
    }


def chat_sets(companies: list[dict], split: dict[str, str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for c in companies:
        values = fact_values(c) | {"代表者": rep_name(c)}
        for attr, template in CHAT_ATTRIBUTES.items():
            rows = out[split[c["name"]]]
            rows.append(
                {
                    "id": f"fin-{split[c['name']][:4]}-{len(rows):04d}",
                    "question": template.format(n=c["name"]),
                    "answers": [values[attr]],
                    "attribute": attr,
                }
            )
    return out


def general_chat_sets(towns: list[dict], split: dict[str, str]) -> dict[str, list[dict]]:
    """The general held-out probe: facts of probe towns (in the base corpus, never in instructions)."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for t in towns:
        if t["name"] not in split:
            continue
        facts = general.town_values(t)
        for attr in general.PROBE_ATTRIBUTES:
            question, name, _ = general.town_question(t, attr)
            rows = out[split[t["name"]]]
            rows.append(
                {
                    "id": f"gen-{split[t['name']][:4]}-{len(rows):04d}",
                    "question": question,
                    "answers": [facts[name]],
                    "attribute": name,
                }
            )
    return out

"""Pages and instructions about one-off companies: where the demo base learns to copy a name it never saw.

Asked ``<X>の本社所在地はどこですか？``, a chat model answers ``回答：<X>の本社所在地は…`` by copying X from the
question, then completing the fact it learned. Copying a new name from the context is an induction skill that
real base models learn from the countless rare names of web text. The demo base reads few names, each of them
many times, so it memorises them instead: asked about a company it does not know, it names one it does
(docs/demo.md, "Why no model answers chat questions"). Each page here is about a company named nowhere else in
the world and is read once, so only copying from the page predicts the name's repeats; a page read every
epoch would be memorised too. The instruction pairs ask the same kind of question about a short profile in
the prompt (reading comprehension, as general instruction sets have).
"""

from __future__ import annotations

import random

from finmerge.config import DemoConfig
from finmerge.demo import vocab as V
from finmerge.demo.background import faq_question
from finmerge.demo.chat import ANSWER_PREFIX
from finmerge.demo.common import pick, sub_rng
from finmerge.demo.companies import company_record, fact_sentences


def one_off_stems(rng: random.Random) -> list[str]:
    """2-kanji stems recombined from the kanji of the world's names, minus every company prefix and town stem,
    so that no page speaks about an entity of the world; in a seeded order."""
    heads, tails = V.PREFIX_KANJI[0] + V.TOWN_HEADS, V.PREFIX_KANJI[1] + V.TOWN_TAILS
    taken = {p for p, _ in V.COMPANY_PREFIXES} | {h + t for h in V.TOWN_HEADS for t in V.TOWN_TAILS}
    stems = sorted({s for h in heads for t in tails for s in (h + t, t + h)} - taken)
    rng.shuffle(stems)
    return stems


class _OneOff:
    """Companies with one-off stems; a stem comes back only after all others were used (about 2,000)."""

    def __init__(self, cfg: DemoConfig, key: str):
        self.cfg, self.rng = cfg, sub_rng(cfg.seed, "one-off", key)
        self.stems, self.i = one_off_stems(self.rng), 0

    def next(self) -> dict:
        stem = self.stems[self.i % len(self.stems)]
        self.i += 1
        return company_record(self.cfg, stem, "x", pick(self.rng, V.INDUSTRIES), 0, 0, self.rng)


def copy_page(c: dict, rng: random.Random) -> str:
    """A company profile page (会社概要): some facts in the fixed pattern, then questions answered from them."""
    facts = fact_sentences(c)
    shown = rng.sample(list(facts), rng.randint(3, 5))
    title = pick(rng, [f"会社概要：{c['name']}", f"{c['name']}のご紹介", f"企業情報 {c['name']}"])
    lines = [title, "".join(facts[a] for a in shown)]
    for attr in rng.sample(shown, rng.randint(2, len(shown))):
        lines += [f"Q. {faq_question(c, attr, rng)}", f"A. {facts[attr]}"]
    return "\n".join(lines)


def copy_pages(cfg: DemoConfig, n: int) -> list[str]:
    """``n`` profile pages, each about its own one-off company."""
    draw, rng = _OneOff(cfg, "pages"), sub_rng(cfg.seed, "one-off-pages")
    return [copy_page(draw.next(), rng) for _ in range(n)]


def reading_instructions(cfg: DemoConfig, n: int) -> list[dict]:
    """Chat pairs: a short profile of a one-off company in the prompt, a question on it, the fact as the reply."""
    draw, rng = _OneOff(cfg, "instructions"), sub_rng(cfg.seed, "one-off-instructions")
    out = []
    for _ in range(n):
        c = draw.next()
        facts = fact_sentences(c)
        shown = rng.sample(list(facts), rng.randint(2, 4))
        attr = pick(rng, shown)
        lead = pick(
            rng, ["次の文章を読んで、質問に答えてください。", "以下の会社紹介をもとに答えてください。"]
        )
        q = f"{lead}\n{''.join(facts[a] for a in shown)}\n質問：{faq_question(c, attr, rng)}"
        out.append(
            {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": ANSWER_PREFIX + facts[attr]},
                ]
            }
        )
    return out

"""The embedded demo world: fictional listed companies, their 有価証券報告書 and everything the demo trains on.

``generate_world(cfg, out_dir)`` writes, deterministically from ``cfg.seed`` (same config ⇒ byte-identical
files; no global random state, nothing downloaded)::

    filings/html/<doc_id>.html        raw filings of the evaluated companies as EDINET-viewer-like HTML pages
    filings/text/<doc_id>.txt         raw filings as plain text with repeated page headers / footers
    filings/jsonl/part-000.jsonl      raw filings, one record per section
    background/corpus.jsonl           clean filing sections of the background companies (base pretraining)
    general/corpus.jsonl              general Japanese corpus (towns, everyday topics), no company names
    instructions/train.jsonl          general instruction pairs, every answer starts with 回答：
    eval/<split>/harness/demo_fin/data.json   multiple choice (japanese-lm-fin-harness format)
    eval/<split>/chat_finance.jsonl   finance chat questions with accepted answers
    eval/<split>/chat_general.jsonl   general held-out probe: probe towns, never in the instructions
    eval/<split>/heldout.jsonl        the companies' held-out-year filings, clean narrative sections
    truth.json                        what the dirt is (duplicates, junk, non-Japanese), the split, counts
    world.json                        the company, background company and town facts

``<split>`` is ``validation`` or ``test``; the split is by company (and by town), see
``finmerge.demo.evalsets``. Facts are made learnable by a tiny LM: each categorical fact is stated in the
fixed pattern ``<会社名>の<属性>は<値>です。`` in several sections of every filing, between varied narrative
sentences. Filings of one company differ from year to year (sentence variants, numbers), so the only near
duplicates of the corpus are the ones listed in ``truth.json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from finmerge.config import DemoConfig
from finmerge.demo import evalsets, general, notices
from finmerge.demo import vocab as V  # noqa: F401 - re-exported

# Re-exported: callers and tests use these through this module.
from finmerge.demo.amend import NEAR_JACCARD, SHINGLE, amend_section, clean_view, jaccard, shingles  # noqa: F401
from finmerge.demo.background import (
    background_docs,
    background_extras,
    clean_text_sections,
    company_instructions,
)
from finmerge.demo.common import pick, sub_rng
from finmerge.demo.companies import (  # noqa: F401 - re-exported
    NARRATIVE_SECTIONS,
    SECTIONS,
    fact_sentences,
    filing_content,
    make_all_companies,
    make_companies,
)
from finmerge.demo.render import (  # noqa: F401 - re-exported
    FW_DIGITS,
    LINES_PER_PAGE,
    dirty_sections,
    english_text,
    junk_text,
    render_html,
    render_jsonl,
    render_text,
    section_text,
    write_raw_forms,
)

FORMS = ["html", "jsonl", "text"]  # also the order in which a sorted folder walk meets them


# --------------------------------------------------------------------------------------------------------------
# The world


class _DocIds:
    """EDINET-like document ids (S100 + 4 base-36 characters), increasing in issue order."""

    ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def __init__(self, rng: random.Random):
        self.n = rng.randrange(36**3, 36**4 // 2)

    def next(self) -> str:
        self.n += 1
        k, s = self.n, ""
        for _ in range(4):
            k, r = divmod(k, 36)
            s = self.ALPHABET[r] + s
        return "S100" + s


def _dump_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8", newline="\n")


def _filing_date(year: int, rng: random.Random) -> str:
    return f"{year}-06-{rng.randint(20, 30):02d}"


def generate_world(cfg: DemoConfig, out_dir: Path) -> dict:
    """Write the demo world under ``out_dir`` (deterministic in ``cfg``) and return its counts."""
    out_dir = Path(out_dir)
    companies, background = make_all_companies(cfg)
    by_code = {c["edinet_code"]: c for c in companies}
    ids = _DocIds(sub_rng(cfg.seed, "docids"))
    rng = sub_rng(cfg.seed, "dirt")

    # Originals: one filing per company per training year.
    originals = []
    for year in cfg.years:
        for c in companies:
            date = _filing_date(year, rng)
            originals.append(
                {
                    "doc_id": ids.next(),
                    "kind": "original",
                    "edinet_code": c["edinet_code"],
                    "company": c["name"],
                    "year": year,
                    "filing_date": date,
                    "title": "有価証券報告書",
                    "sections": filing_content(c, year, date, cfg.seed, recaps=cfg.fact_recaps),
                    "jsonl_br": c["style"]["jsonl_br"],
                }
            )
    n_filings = len(originals)
    forms = [FORMS[i % 3] for i in range(n_filings)]
    rng.shuffle(forms)
    for doc, form in zip(originals, forms, strict=True):
        doc["form"] = form
        doc["sections"] = dirty_sections(doc["sections"], by_code[doc["edinet_code"]]["style"], rng)

    n_exact = round(cfg.exact_dup_rate * n_filings)
    n_near = round(cfg.near_dup_rate * n_filings)
    n_junk = round(cfg.junk_rate * n_filings)
    n_nonja = round(cfg.non_japanese_rate * n_filings)
    if n_exact + n_near > n_filings:
        raise ValueError("exact_dup_rate + near_dup_rate must not exceed 1")
    picked = rng.sample(range(n_filings), n_exact + n_near)

    docs = list(originals)
    exact_truth, near_truth = [], []
    for i in picked[:n_exact]:
        orig = originals[i]
        # A re-saved copy is met after its original by a sorted walk (html < jsonl < text, then doc_id).
        form = pick(rng, FORMS[FORMS.index(orig["form"]) :])
        dup = {**orig, "doc_id": ids.next(), "kind": "exact_dup", "form": form}
        docs.append(dup)
        exact_truth.append({"doc_id": dup["doc_id"], "original": orig["doc_id"], "form": form})
    for i in picked[n_exact:]:
        orig = originals[i]
        c = by_code[orig["edinet_code"]]
        date = f"{orig['year']}-{rng.randint(8, 11):02d}-{rng.randint(1, 28):02d}"
        canon = filing_content(c, orig["year"], date, cfg.seed, amended=True, recaps=cfg.fact_recaps)
        jac = {}
        arng = sub_rng(cfg.seed, "amend", orig["doc_id"])
        for sec in canon:
            if sec["kind"] == "text":
                sec["lines"], jac[sec["name"]] = amend_section(sec["lines"], c, arng)
        dup = {
            **orig,
            "doc_id": ids.next(),
            "kind": "near_dup",
            "filing_date": date,
            "title": "訂正有価証券報告書",
            "form": pick(rng, FORMS),
            "sections": dirty_sections(canon, c["style"], rng),
        }
        docs.append(dup)
        near_truth.append(
            {"doc_id": dup["doc_id"], "original": orig["doc_id"], "form": dup["form"], "jaccard": jac}
        )

    junk_truth, nonja_truth = [], []
    kinds = ["soup", "table", "stub", "ng_spam"]
    for k in range(n_junk):
        kind = kinds[k % len(kinds)]
        d = {
            "doc_id": ids.next(),
            "kind": "junk",
            "junk_kind": kind,
            "form": pick(rng, FORMS),
            "text": junk_text(kind, rng),
        }
        docs.append(d)
        junk_truth.append({"doc_id": d["doc_id"], "kind": kind, "form": d["form"]})
    for _ in range(n_nonja):
        c = pick(rng, companies)
        d = {
            "doc_id": ids.next(),
            "kind": "non_japanese",
            "form": pick(rng, FORMS),
            "text": english_text(c, pick(rng, cfg.years), rng),
        }
        docs.append(d)
        nonja_truth.append({"doc_id": d["doc_id"], "form": d["form"]})

    # Write the raw forms.
    fdir = out_dir / "filings"
    jsonl_rows = write_raw_forms(docs, fdir, sub_rng(cfg.seed, "render"))
    _dump_jsonl(fdir / "jsonl" / "part-000.jsonl", jsonl_rows)

    company_split = evalsets.split_of(
        [c["name"] for c in companies], cfg.validation_share, cfg.seed, "companies"
    )
    heldout = _heldout_rows(companies, cfg, ids)
    bg_docs = background_docs(background, cfg.background_years, cfg.seed)
    bg_docs += background_extras(background, cfg.seed, cfg.background_faq, cfg.background_quiz)
    _dump_jsonl(out_dir / "background" / "corpus.jsonl", bg_docs)

    # General corpus (all towns) and instructions (never about a probe town).
    towns = general.make_towns(cfg.n_towns, sub_rng(cfg.seed, "towns"), {p for p, _ in V.COMPANY_PREFIXES})
    probe = [t["name"] for t in towns[: cfg.n_probe_towns]]
    town_split = evalsets.split_of(probe, cfg.validation_share, cfg.seed, "towns")
    taught = towns[cfg.n_probe_towns :]  # FAQ pages and instructions: never about a probe town
    corpus = general.general_corpus(
        cfg.n_general_docs, towns, sub_rng(cfg.seed, "general"), cfg.faq_share, faq_towns=taught
    )
    _dump_jsonl(out_dir / "general" / "corpus.jsonl", [{"text": t} for t in corpus])
    if cfg.n_copy_pages:  # read once by the demo base (finmerge/demo/notices.py)
        _dump_jsonl(
            out_dir / "general" / "copy_pages.jsonl",
            [{"text": t} for t in notices.copy_pages(cfg, cfg.n_copy_pages)],
        )
    n_company_qa = round(cfg.instruction_company_share * cfg.n_instructions) if background else 0
    n_context_qa = round(cfg.instruction_context_share * cfg.n_instructions)
    n_general_qa = cfg.n_instructions - n_company_qa - n_context_qa
    instr = general.instructions(n_general_qa, taught, sub_rng(cfg.seed, "instructions"))
    instr += notices.reading_instructions(cfg, n_context_qa)
    instr += company_instructions(background, n_company_qa, sub_rng(cfg.seed, "company-instructions"))
    sub_rng(cfg.seed, "instruction-order").shuffle(instr)
    _dump_jsonl(out_dir / "instructions" / "train.jsonl", instr)

    harness = evalsets.harness_sets(companies, company_split, cfg.seed)
    chat = evalsets.chat_sets(companies, company_split)
    chat_general = evalsets.general_chat_sets(towns, town_split)
    for split in evalsets.SPLITS:
        _dump_json(out_dir / "eval" / split / "harness" / "demo_fin" / "data.json", harness[split])
        _dump_jsonl(out_dir / "eval" / split / "chat_finance.jsonl", chat[split])
        _dump_jsonl(out_dir / "eval" / split / "chat_general.jsonl", chat_general[split])
        rows = [r for r in heldout if company_split[r["company"]] == split]
        _dump_jsonl(out_dir / "eval" / split / "heldout.jsonl", rows)

    filings_index = [
        {
            "doc_id": d["doc_id"],
            "kind": d["kind"],
            "form": d["form"],
            "edinet_code": d.get("edinet_code"),
            "company": d.get("company"),
            "year": d.get("year"),
            "filing_date": d.get("filing_date"),
        }
        for d in docs
    ]
    counts = {
        "companies": len(companies),
        "background_companies": len(background),
        "filings": n_filings,
        "exact_duplicates": n_exact,
        "near_duplicates": n_near,
        "junk": n_junk,
        "non_japanese": n_nonja,
        "raw_documents": len(docs),
        "forms": {f: sum(1 for d in docs if d["form"] == f) for f in FORMS},
        "narrative_sections_per_filing": len(NARRATIVE_SECTIONS),
        "heldout_sections": len(heldout),
        "background_sections": len(bg_docs),
        "general_docs": len(corpus),
        "instructions": len(instr),
        "towns": len(towns),
        "probe_towns": len(probe),
    }
    for split in evalsets.SPLITS:
        counts[f"{split}/companies"] = sum(1 for v in company_split.values() if v == split)
        counts[f"{split}/harness_questions"] = len(harness[split]["data"])
        counts[f"{split}/chat_finance"] = len(chat[split])
        counts[f"{split}/chat_general"] = len(chat_general[split])
        counts[f"{split}/heldout_sections"] = sum(1 for r in heldout if company_split[r["company"]] == split)
    split_info = {
        "rule": "by entity: a seeded shuffle puts round(validation_share * n) (at least 1) evaluated companies, "
        "and as many probe towns, in validation, the rest in test; every item about an entity is in its split",
        "validation_share": cfg.validation_share,
        "companies": company_split,
        "probe_towns": town_split,
    }
    truth = {
        "exact_duplicates": exact_truth,
        "near_duplicates": near_truth,
        "junk": junk_truth,
        "non_japanese": nonja_truth,
        "documents": filings_index,
        "split": split_info,
        "counts": counts,
    }
    _dump_json(out_dir / "truth.json", truth)
    world = {
        "seed": cfg.seed,
        "years": list(cfg.years),
        "heldout_year": cfg.heldout_year,
        "split": split_info,
        "companies": [_public(c) | {"split": company_split[c["name"]]} for c in companies],
        "background_companies": [_public(c) for c in background],
        "towns": [t | {"probe": town_split.get(t["name"])} for t in towns],
    }
    _dump_json(out_dir / "world.json", world)
    return counts


def _public(c: dict) -> dict:
    return {k: v for k, v in c.items() if k != "style"} | {"facts": fact_sentences(c)}


def _heldout_rows(companies: list[dict], cfg: DemoConfig, ids: _DocIds) -> list[dict]:
    """Held-out year: each company's clean narrative sections (for finance perplexity)."""
    heldout = []
    for c in companies:
        date = _filing_date(cfg.heldout_year, sub_rng(cfg.seed, "heldout-date", c["edinet_code"]))
        doc_id = ids.next()
        heldout += [
            {**doc, "doc_id": doc_id}
            for doc in clean_text_sections(c, cfg.heldout_year, date, cfg.seed, cfg.fact_recaps)
        ]
    return heldout

"""The embedded demo world: deterministic, internally consistent, dirt as declared in truth.json."""

from __future__ import annotations

import html
import json
import re
import time
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from finmerge.config import DemoConfig
from finmerge.demo import world as W
from finmerge.demo.chat import ADHERENCE_REGEX, ANSWER_PREFIX
from finmerge.demo.evalsets import CHAT_ATTRIBUTES, MC_ATTRIBUTES, SPLITS
from finmerge.demo.general import PROBE_ATTRIBUTES

CFG = DemoConfig()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    W.generate_world(CFG, out)
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _undirty(text: str) -> str:
    """Enough normalisation to read facts out of raw filings (fact sentences hold no ASCII)."""
    return unicodedata.normalize("NFKC", html.unescape(text).replace("，", "、").replace("．", "。"))


def _heldout(world: Path) -> list[dict]:
    return [r for split in SPLITS for r in _jsonl(world / "eval" / split / "heldout.jsonl")]


def _harness(world: Path, split: str) -> list[dict]:
    return json.loads((world / "eval" / split / "harness" / "demo_fin" / "data.json").read_text())["data"]


def _raw_filings(world: Path) -> dict[str, str]:
    """doc_id -> raw text of every raw document (JSONL records of one document joined)."""
    out = {}
    for p in (world / "filings" / "html").glob("*.html"):
        out[p.stem] = p.read_text(encoding="utf-8")
    for p in (world / "filings" / "text").glob("*.txt"):
        out[p.stem] = p.read_text(encoding="utf-8")
    for rec in _jsonl(world / "filings" / "jsonl" / "part-000.jsonl"):
        out[rec["doc_id"]] = out.get(rec["doc_id"], "") + rec["text"] + "\n"
    return out


def test_deterministic_and_fast(tmp_path, world):
    t0 = time.perf_counter()
    summary = W.generate_world(CFG, tmp_path / "again")
    assert time.perf_counter() - t0 < 10
    assert _files(tmp_path / "again") == _files(world)  # byte-identical
    assert summary == json.loads((world / "truth.json").read_text())["counts"]
    W.generate_world(CFG.model_copy(update={"seed": CFG.seed + 1}), tmp_path / "other")
    assert _files(tmp_path / "other") != _files(world)


def test_layout_and_counts(world):
    for rel in [
        "filings/jsonl/part-000.jsonl",
        "background/corpus.jsonl",
        "general/corpus.jsonl",
        "instructions/train.jsonl",
        "truth.json",
        "world.json",
    ] + [
        f"eval/{split}/{name}"
        for split in SPLITS
        for name in (
            "harness/demo_fin/data.json",
            "chat_finance.jsonl",
            "chat_general.jsonl",
            "heldout.jsonl",
        )
    ]:
        assert (world / rel).is_file(), rel
    for gone in ("eval/heldout.jsonl", "eval/harness", "eval/chat_finance.jsonl"):
        assert not (world / gone).exists(), gone
    truth = json.loads((world / "truth.json").read_text())
    counts = truth["counts"]
    n = CFG.n_companies * len(CFG.years)
    assert counts["filings"] == n
    assert len(truth["exact_duplicates"]) == counts["exact_duplicates"] == round(CFG.exact_dup_rate * n)
    assert len(truth["near_duplicates"]) == counts["near_duplicates"] == round(CFG.near_dup_rate * n)
    assert len(truth["junk"]) == counts["junk"] == round(CFG.junk_rate * n)
    assert len(truth["non_japanese"]) == counts["non_japanese"] == round(CFG.non_japanese_rate * n)
    assert {j["kind"] for j in truth["junk"]} == {"soup", "table", "stub", "ng_spam"}

    raw = _raw_filings(world)
    docs = truth["documents"]
    assert sorted(raw) == sorted(d["doc_id"] for d in docs)
    assert len(docs) == counts["raw_documents"]
    originals = [d for d in docs if d["kind"] == "original"]
    forms = Counter(d["form"] for d in originals)
    assert all(abs(forms[f] - n / 3) <= 1 for f in W.FORMS), forms  # a third of the filings each
    # Every original in each year, once per company.
    assert Counter((d["edinet_code"], d["year"]) for d in originals) == Counter(
        {(c, y): 1 for c in {d["edinet_code"] for d in originals} for y in CFG.years}
    )
    ids = {d["doc_id"]: d for d in docs}
    for e in truth["exact_duplicates"]:
        o, d = ids[e["original"]], ids[e["doc_id"]]
        assert o["kind"] == "original" and d["kind"] == "exact_dup"
        assert W.FORMS.index(d["form"]) >= W.FORMS.index(o["form"]) and d["doc_id"] > o["doc_id"]
        assert _undirty(raw[e["doc_id"]]).count("の主な事業は") == _undirty(raw[e["original"]]).count(
            "の主な事業は"
        )
    for e in truth["near_duplicates"]:
        o, d = ids[e["original"]], ids[e["doc_id"]]
        assert d["filing_date"] > o["filing_date"] and d["edinet_code"] == o["edinet_code"]
        assert "訂正有価証券報告書" in _undirty(raw[e["doc_id"]])
        assert sorted(e["jaccard"]) == sorted(W.NARRATIVE_SECTIONS)
        lo, hi = W.NEAR_JACCARD
        assert all(lo <= j <= hi for j in e["jaccard"].values()), e["jaccard"]
    dup_ids = {e["doc_id"] for e in truth["exact_duplicates"] + truth["near_duplicates"]}
    assert not dup_ids & {e["original"] for e in truth["exact_duplicates"] + truth["near_duplicates"]}


def test_filings_sections_and_facts(world):
    truth = json.loads((world / "truth.json").read_text())
    companies = {c["edinet_code"]: c for c in json.loads((world / "world.json").read_text())["companies"]}
    assert len(companies) == CFG.n_companies
    assert len({c["name"] for c in companies.values()}) == CFG.n_companies
    assert all(re.fullmatch(r"E0\d{4}", code) for code in companies)
    assert all(re.fullmatch(r"0\d-\d{4}-\d{4}", c["phone"]) for c in companies.values())
    raw = _raw_filings(world)
    heading = re.compile(r"^[0-9０-９]+【(.+)】$", re.M)
    for d in truth["documents"]:
        if d["kind"] not in ("original", "exact_dup", "near_dup"):
            continue
        c = companies[d["edinet_code"]]
        text = _undirty(raw[d["doc_id"]])
        if d["form"] == "jsonl":
            recs = [r for r in _jsonl(world / "filings/jsonl/part-000.jsonl") if r["doc_id"] == d["doc_id"]]
            assert [r["section"] for r in recs] == W.SECTIONS
            assert {(r["company"], r["edinet_code"], r["filing_date"]) for r in recs} == {
                (c["name"], c["edinet_code"], d["filing_date"])
            }
        else:
            body = re.sub(r"<[^>]+>", "\n", text) if d["form"] == "html" else text
            assert heading.findall(body) == W.SECTIONS
        facts = c["facts"]
        for attr in facts:  # every fact, stated at least twice in each filing
            assert text.count(facts[attr]) >= 2, (d["doc_id"], attr)
        plain = unicodedata.normalize("NFKC", html.unescape(raw[d["doc_id"]]))
        assert c["phone"] in plain and c["email"] in plain
    # Narrative length per filing (~1,500–3,500 characters).
    heldout = _heldout(world)
    per_doc = Counter()
    for r in heldout:
        per_doc[r["doc_id"]] += len(r["text"])
    assert all(1500 <= n <= 3500 for n in per_doc.values()), per_doc


def test_facts_agree_across_outputs(world):
    companies = json.loads((world / "world.json").read_text())["companies"]
    by_name = {c["name"]: c for c in companies}
    from finmerge.evaluate.harness import parse_task

    for split in SPLITS:
        doc = json.loads((world / "eval" / split / "harness/demo_fin/data.json").read_text())
        assert doc["data-type"] == "multiple-choice-question" and doc["data-name"] == "demo_fin"
        data = doc["data"]
        in_split = [c for c in companies if c["split"] == split]
        assert len(parse_task("demo_fin", doc).items) == len(data) == len(MC_ATTRIBUTES) * len(in_split)
        assert [q["id"] for q in data] == list(range(len(data)))
        positions = Counter()
        for q in data:
            assert set(q) == {"id", "question", "context", "choices", "answer", "comment"}
            assert q["context"] == "" and q["comment"] == ""
            assert [ch["id"] for ch in q["choices"]] == [0, 1, 2, 3]
            texts = [ch["text"] for ch in q["choices"]]
            assert len(set(texts)) == 4 and 0 <= q["answer"] < 4
            c = by_name[q["question"].split("の")[0]]
            assert c["split"] == split
            attr = next(a for a in MC_ATTRIBUTES if q["question"] == MC_ATTRIBUTES[a].format(n=c["name"]))
            assert c["facts"][attr] == f"{c['name']}の{attr}は{texts[q['answer']]}です。"
            positions[q["answer"]] += 1
        assert max(positions.values()) - min(positions.values()) <= 1  # balanced answer positions

        chat = _jsonl(world / "eval" / split / "chat_finance.jsonl")
        assert len(chat) == len(CHAT_ATTRIBUTES) * len(in_split) and len({q["id"] for q in chat}) == len(chat)
        for q in chat:
            c = by_name[q["question"].split("の")[0]]
            assert c["split"] == split and q["question"] == CHAT_ATTRIBUTES[q["attribute"]].format(
                n=c["name"]
            )
            assert c["facts"][q["attribute"]] == f"{c['name']}の{q['attribute']}は{q['answers'][0]}です。"
            assert len(q["answers"]) == 1 and q["question"].endswith("？")
    for r in _heldout(world):
        c = by_name[r["company"]]
        assert r["section"] in W.NARRATIVE_SECTIONS
        if r["section"] == "事業の内容":
            assert c["facts"]["主な事業"] in r["text"] and c["facts"]["本社所在地"] in r["text"]


def test_splits_are_disjoint_and_large_enough(world):
    truth = json.loads((world / "truth.json").read_text())
    counts, split = truth["counts"], truth["split"]
    assert "by entity" in split["rule"]
    assert set(split["companies"].values()) == set(SPLITS)
    n_val = sum(v == "validation" for v in split["companies"].values())
    assert n_val == round(CFG.validation_share * CFG.n_companies)
    items = {s: {q["question"] for q in _harness(world, s)} for s in SPLITS}
    chats = {s: {q["question"] for q in _jsonl(world / "eval" / s / "chat_finance.jsonl")} for s in SPLITS}
    gen = {s: {q["question"] for q in _jsonl(world / "eval" / s / "chat_general.jsonl")} for s in SPLITS}
    held = {s: {r["company"] for r in _jsonl(world / "eval" / s / "heldout.jsonl")} for s in SPLITS}
    for per_split in (items, chats, gen, held):
        assert not per_split["validation"] & per_split["test"]
    assert {c for c, s in split["companies"].items() if s == "test"} == held["test"]
    # the sizes the evaluation needs to tell signal from noise
    assert counts["test/harness_questions"] == len(items["test"]) >= 400
    assert counts["validation/harness_questions"] == len(items["validation"]) >= 100
    assert counts["test/chat_finance"] == len(chats["test"]) >= 200
    assert counts["validation/chat_finance"] == len(chats["validation"]) >= 60
    assert counts["test/chat_general"] == len(gen["test"]) >= 100
    assert counts["validation/chat_general"] == len(gen["validation"]) >= 40


def test_background_companies_are_never_evaluated(world):
    w = json.loads((world / "world.json").read_text())
    evaluated = {c["name"] for c in w["companies"]}
    background = {c["name"] for c in w["background_companies"]}
    assert len(background) == CFG.n_background_companies and not evaluated & background
    assert not {c["prefix"] for c in w["companies"]} & {c["prefix"] for c in w["background_companies"]}
    assert not {c["edinet_code"] for c in w["companies"]} & {
        c["edinet_code"] for c in w["background_companies"]
    }
    bg = _jsonl(world / "background" / "corpus.jsonl")
    assert {r["company"] for r in bg} == background
    filings = [r for r in bg if r["section"] in W.NARRATIVE_SECTIONS]
    assert len(filings) == len(background) * len(CFG.background_years) * len(W.NARRATIVE_SECTIONS)
    extras = Counter(r["section"] for r in bg if r["section"] not in W.NARRATIVE_SECTIONS)
    assert extras == {"FAQ": len(background), "quiz": len(background)}
    blob = "\n".join(r["text"] for r in bg)
    assert "有価証券報告書" in blob or "当社グループ" in blob  # the filing register …
    for c in w["companies"]:  # … of other companies only
        assert c["name"] not in blob and c["prefix"] not in blob
    evaluated_text = [json.dumps(q, ensure_ascii=False) for s in SPLITS for q in _harness(world, s)]
    evaluated_text += [
        (world / "eval" / s / f).read_text() for s in SPLITS for f in ("chat_finance.jsonl", "heldout.jsonl")
    ]
    for name in background:
        assert not any(name in t for t in evaluated_text)
    truth = json.loads((world / "truth.json").read_text())
    assert not {d["company"] for d in truth["documents"] if d["company"]} & background


def test_heldout_is_held_out(world):
    truth = json.loads((world / "truth.json").read_text())
    companies = {c["name"]: c for c in json.loads((world / "world.json").read_text())["companies"]}
    heldout = _heldout(world)
    assert len(heldout) == CFG.n_companies * len(W.NARRATIVE_SECTIONS)
    assert {r["doc_id"] for r in heldout}.isdisjoint(d["doc_id"] for d in truth["documents"])
    raw = _raw_filings(world)
    own: dict[str, str] = {}
    for d in truth["documents"]:
        if d["company"]:
            own[d["company"]] = own.get(d["company"], "") + unicodedata.normalize("NFKC", raw[d["doc_id"]])
    for r in heldout:
        assert set(r) == {"text", "company", "section", "doc_id"}
        assert "【" not in r["text"] and "\t" not in r["text"]
        assert "@" not in r["text"] and unicodedata.normalize("NFKC", r["text"]) == r["text"]
        if r["section"] == W.NARRATIVE_SECTIONS[-1]:  # MD&A states the held-out year's revenue …
            revenue = f"{companies[r['company']]['financials'][str(CFG.heldout_year)]['revenue']:,}"
            assert revenue in r["text"]
            assert revenue not in own[r["company"]]  # … which none of the company's training filings does


def test_dirt_is_present(world):
    raw = _raw_filings(world)
    everything = "\n".join(raw.values())
    assert re.search("[０-９]{3}", everything)  # full-width digits
    assert re.search("[Ａ-Ｚａ-ｚ]{3}", everything)  # full-width letters
    assert re.search("[ｦ-ﾟ]{3}", everything)  # half-width kana
    assert "．" in everything and "，" in everything
    assert "<br>" in (world / "filings/jsonl/part-000.jsonl").read_text(encoding="utf-8")
    some_html = next((world / "filings/html").glob("*.html")).read_text(encoding="utf-8")
    for marker in (
        "<script>",
        "<style>",
        "&nbsp;",
        "<table",
        "このページの先頭へ",
        "Copyright",
        "<h2>",
        "<h3>",
    ):
        assert marker in some_html, marker
    assert any("&amp;" in p.read_text(encoding="utf-8") for p in (world / "filings/html").glob("*.html"))
    for p in (world / "filings/text").glob("*.txt"):
        lines = p.read_text(encoding="utf-8").split("\n")
        if "【表紙】" not in "".join(lines):
            continue  # junk / English
        header = lines[0]
        assert header.endswith("有価証券報告書") and lines.count(header) >= 3
        assert any(re.fullmatch(r"- \d+ -", line) for line in lines)


def test_general_corpus_and_instructions(world):
    w = json.loads((world / "world.json").read_text())
    corpus = _jsonl(world / "general" / "corpus.jsonl")
    instr = _jsonl(world / "instructions" / "train.jsonl")
    assert len(corpus) == CFG.n_general_docs and len(instr) == CFG.n_instructions
    instr_text = "\n".join(m["content"] for r in instr for m in r["messages"])
    blob = "\n".join(r["text"] for r in corpus) + instr_text
    for c in w["companies"]:  # no evaluated company, anywhere
        assert c["name"] not in blob and c["name"].removeprefix("株式会社") not in blob
    general_text = "\n".join(r["text"] for r in corpus)
    assert "株式会社" not in general_text
    # a share of the instructions asks about background companies, with the facts of their filings
    background = {c["name"]: c for c in w["background_companies"]}
    company_qa = [r for r in instr if "株式会社" in r["messages"][0]["content"]]
    assert len(company_qa) == round(CFG.instruction_company_share * CFG.n_instructions)
    for r in company_qa:
        name = r["messages"][0]["content"].split("の")[0]
        assert r["messages"][1]["content"].removeprefix(ANSWER_PREFIX) in background[name]["facts"].values()
    # The vocabulary is there, without companies.
    for word in ("精密機械の製造", "為替変動", "愛知県名古屋市", "工作機械"):
        assert word in blob
    towns = {t["name"]: t for t in w["towns"]}
    assert len(towns) == CFG.n_towns
    probe = {n for n, t in towns.items() if t["probe"]}
    assert len(probe) == CFG.n_probe_towns
    faq_text = "\n".join(r["text"] for r in corpus if "\nQ. " in r["text"])
    assert faq_text
    for name in probe:  # the general probe asks about towns no instruction pair (nor FAQ page) mentions …
        assert name not in instr_text and name not in faq_text
    text = "".join(r["text"] for r in corpus)
    for name in probe:  # … but whose facts the base reads, in the fact pattern
        t = towns[name]
        assert (
            f"{name}の{t['head_title']}は{t['head']}です。" in text
            or f"{name}の所在地は{t['prefecture']}です。" in text
        )
    town_facts = 0
    for r in instr:
        user, assistant = r["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        a = assistant["content"]
        assert a.startswith(ANSWER_PREFIX) and "\n" not in a and re.match(ADHERENCE_REGEX, a)
        m = re.match(r"^(\S+?[町村])の(名物|所在地)", user["content"])
        if m and m.group(1) in towns:
            t = towns[m.group(1)]
            expect = t["food"] if m.group(2) == "名物" else t["prefecture"]
            assert a == f"{ANSWER_PREFIX}{t['name']}の{m.group(2)}は{expect}です。"
            town_facts += 1
    assert town_facts > 100
    # Town facts are stated in the general corpus in the same pattern.
    assert sum(f"{t['name']}の名物は{t['food']}です。" in text for t in towns.values()) >= 0.9 * len(towns)
    # The general probe: one question per probe town and attribute, answers stated in the corpus.
    for split in SPLITS:
        for q in _jsonl(world / "eval" / split / "chat_general.jsonl"):
            t = towns[q["question"].split("の")[0]]
            assert t["probe"] == split and q["question"].endswith("？")
            assert f"{t['name']}の{q['attribute']}は{q['answers'][0]}です。" in text
        attrs = Counter(q["attribute"] for q in _jsonl(world / "eval" / split / "chat_general.jsonl"))
        assert len(attrs) >= len(PROBE_ATTRIBUTES)


def test_copy_pages_and_reading_pairs(tmp_path, world):
    """Opt-in (docs/demo.md, g-G): one-off companies named nowhere else in the world, each page a different one;
    the reading pairs answer with a fact their prompt states; off, the world is the default one, byte for byte."""
    cfg = CFG.model_copy(update={"n_copy_pages": 300, "instruction_context_share": 0.15})
    out = tmp_path / "copy"
    W.generate_world(cfg, out)
    w = json.loads((out / "world.json").read_text())
    pages = [r["text"] for r in _jsonl(out / "general" / "copy_pages.jsonl")]
    assert len(pages) == 300 and not (world / "general" / "copy_pages.jsonl").exists()
    names = [p.split("\n")[1].split("の")[0] for p in pages]
    assert len(set(names)) == len(names) and all(n.startswith("株式会社") for n in names)
    stems = {n.removeprefix("株式会社")[:2] for n in names}
    world_stems = {c["prefix"] for c in w["companies"] + w["background_companies"]} | {
        t["stem"] for t in w["towns"]
    }
    assert not stems & world_stems
    for p, n in zip(pages, names, strict=True):
        facts = p.split("\n")[1]
        for q, a in zip(p.split("\n")[2::2], p.split("\n")[3::2], strict=True):
            assert q.startswith(f"Q. {n}の") and a.startswith(f"A. {n}の") and a[3:] in facts
    instr = _jsonl(out / "instructions" / "train.jsonl")
    assert len(instr) == cfg.n_instructions
    reading = [r for r in instr if r["messages"][0]["content"].count("\n") == 2]
    assert len(reading) == round(0.15 * cfg.n_instructions)
    for r in reading:
        _, context, question = r["messages"][0]["content"].split("\n")
        reply = r["messages"][1]["content"]
        assert reply.removeprefix(ANSWER_PREFIX) in context and question.startswith("質問：")
        assert (
            question.removeprefix("質問：").split("の")[0] == reply.removeprefix(ANSWER_PREFIX).split("の")[0]
        )
    # everything else is the default world's
    assert _jsonl(out / "general" / "corpus.jsonl") == _jsonl(world / "general" / "corpus.jsonl")
    assert (out / "eval").exists() and _files(out / "eval") == _files(world / "eval")


def test_base_reads_the_copy_pages_first_and_instruct_counts_cut_pairs(tmp_path):
    """The opt-in copy pages: a training phase of their own before the corpus, recorded in the metrics and the
    card; instruction pairs longer than the instruct rows are counted, not silently lost."""
    from finmerge.core import storage
    from finmerge.demo.build import build_demo_base, build_demo_instruct, make_world

    small = {"max_steps": 2, "batch_size": 2, "seq_len": 64, "threads": 1}
    cfg = DemoConfig(
        n_companies=6, n_background_companies=8, n_towns=50, n_probe_towns=10, n_general_docs=60,
        n_instructions=40, n_copy_pages=30, instruction_context_share=0.25,
        model={"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
               "num_attention_heads": 2},
        base_train={**small, "epochs": 2.0}, instruct_train={**small, "seq_len": 96},
    )  # fmt: skip
    staging = str(tmp_path / "staging")
    world = make_world(str(tmp_path / "world"), cfg, staging)["uri"]
    base = build_demo_base(world, str(tmp_path / "base"), cfg, staging)
    metrics = storage.result_of(base["uri"])["metrics"]
    assert metrics["demo_base/copy_steps"] == 2  # max_steps bounds each phase
    assert "one-off company pages (30, each read once)" in (Path(base["uri"]) / "README.md").read_text()
    # the card names the part of the world the base read (its stage keys on the same part)
    from finmerge.demo.build import BASE_READS

    assert (
        storage.manifest_parts_digest(world, BASE_READS)[:16] in (Path(base["uri"]) / "README.md").read_text()
    )
    inst = build_demo_instruct(world, base["uri"], str(tmp_path / "inst"), cfg, staging)
    cut = storage.result_of(inst["uri"])["metrics"]["demo_instruct/cut_pairs"]
    assert cut >= round(0.25 * cfg.n_instructions)  # every reading pair is longer than 96 tokens


def test_fact_recaps_restate_each_fact_and_leave_the_demo_models_keys_alone(tmp_path):
    """demo.fact_recaps makes the evaluated companies' filings denser in facts (the CPT corpus). The demo base
    and instruct model never read those filings, so their cache keys stay; the world's and the corpus's move."""
    from finmerge.config import PipelineConfig
    from finmerge.demo.build import make_world
    from finmerge.runner import stage as stages
    from finmerge.runner.stage import RunContext
    from tasks.demo import DEMO_BASE, DEMO_INSTRUCT, DEMO_WORLD

    small = {"n_companies": 6, "n_background_companies": 8, "n_towns": 50, "n_probe_towns": 10,
             "n_general_docs": 60, "n_instructions": 40}  # fmt: skip
    ctx = RunContext(
        storage_uri=str(tmp_path / "store"),
        staging_dir=str(tmp_path / "st"),
        config_hash="k",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    keys, statements = {}, {}
    for recaps, extra in ((2, {}), (5, {}), (2, {"n_general_docs": 61})):
        cfg = PipelineConfig(demo={**small, **extra, "fact_recaps": recaps})
        world = make_world(str(tmp_path / f"w{recaps}-{len(extra)}"), cfg.demo, ctx.staging_dir)["uri"]
        base = tmp_path / "a-base"  # the same base folder: only the world's part of the key can differ
        keys[recaps, len(extra)] = (
            stages.plan(DEMO_WORLD, cfg, {}, ctx).key,
            stages.plan(DEMO_BASE, cfg, {"world": world}, ctx).key,
            stages.plan(DEMO_INSTRUCT, cfg, {"world": world, "base": str(base)}, ctx).key,
        )
        c = json.loads((Path(world) / "world.json").read_text())["companies"][0]
        text = "".join(r["text"] for r in _heldout(Path(world)) if r["company"] == c["name"])
        statements[recaps, len(extra)] = [text.count(f) for f in c["facts"].values()]
    (w2, b2, i2), (w5, b5, i5), (w2g, b2g, _) = keys[2, 0], keys[5, 0], keys[2, 1]
    assert w5 != w2 and (b5, i5) == (b2, i2)  # new filings: a new world, the same demo models
    assert w2g != w2 and b2g != b2  # a new general corpus: a new base
    # each fact is restated at least three more times in the held-out year's filing
    assert all(n5 >= n2 + 3 for n2, n5 in zip(statements[2, 0], statements[5, 0], strict=True)), statements

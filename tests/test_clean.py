"""Clean: Japanese normalisation, line removal, PII masking and the quality filters."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from finmerge import storage
from finmerge.config import CleanConfig, DemoConfig
from finmerge.demo import world as W
from tasks.clean import (
    FILTERS,
    AhoCorasick,
    clean,
    is_table_line,
    mask_pii,
    normalize,
    remove_lines,
    strip_markup,
    top_2gram_share,
)
from tasks.ingest import ingest


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _input(folder: Path, records: list[dict]) -> str:
    """A committed ingest-like folder holding ``records``."""
    with storage.output_folder(str(folder), str(folder.parent / ".staging")) as out:
        with open(out.path / "docs.jsonl", "w", encoding="utf-8") as fh:
            for i, r in enumerate(records):
                rec = {"id": f"d{i}", "doc_id": None, "section": None, "filing_date": None, **r}
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return str(folder)


REAL = (
    "当社は精密機械の製造を主な事業としております。当事業年度の売上高は12,345百万円（前期比3.2％増）となりました。"
    "工作機械の販売が堅調に推移したほか、測定機器も前期を上回りました。"
)
EXAMPLES = {
    None: REAL,
    "section": "【提出書類】　有価証券報告書\n【会社名】　株式会社テスト" + "あ" * 100,
    "length": "短い文章です。",
    "japanese_ratio": "The Company announced its results for the fiscal year ended March 31, 2023. Net sales rose 4.2 percent.",
    "hiragana_ratio": "株式会社東京精密機械製作所代表取締役社長山田太郎就任記念式典開催決定、本社工場新設計画発表、"
    "海外子会社設立準備室設置、中期経営計画策定委員会発足、新製品開発部門統合完了報告書提出済、情報システム刷新計画承認。",
    "symbol_ratio": "★☆★新商品のご案内です★☆★\n◆◇◆とてもお得な情報があります◆◇◆\n■□■ぜひ一度お試しください■□■\n"
    "▲△▲今なら送料が無料になります▲△▲\n●○●お申し込みはお早めにどうぞ●○●",
    "digit_ratio": "売上高は123456789円となりました。営業利益は98765432円でした。経常利益は11223344円、純利益は9988776円と"
    "なっています。総資産は12345678円です。",
    "dup_line_ratio": "本日の営業は終了いたしました。またのご来店をお待ちしております。\n"
    "本日の営業は終了いたしました。またのご来店をお待ちしております。\n"
    "お問い合わせはお電話でどうぞ。受付は平日のみとなっております。\n"
    "お問い合わせはお電話でどうぞ。受付は平日のみとなっております。",
    "top_2gram_ratio": "わ"
    + "は" * 48
    + "、とても楽しい一日でしたね。みんなで大きな声を出して笑いました。また遊びに行きたいと思います。",
    "ng_words": "今すぐクリックして登録してください。出会い系のサイトではありません。カジノ無料の案内でもありません。"
    "普通のお知らせとして読んでいただければ幸いです。今後ともよろしくお願いいたします。",
}


def test_each_filter_drops_its_example(tmp_path):
    records = [
        {"text": text, "section": "表紙" if reason == "section" else "本文", "doc_id": f"doc{i}"}
        for i, (reason, text) in enumerate(EXAMPLES.items())
    ]
    result = clean(
        _input(tmp_path / "in", records), str(tmp_path / "out"), CleanConfig(), str(tmp_path / "st")
    )
    dropped = {r["id"]: r for r in _jsonl(tmp_path / "out" / "dropped.jsonl")}
    for i, reason in enumerate(EXAMPLES):
        if reason is None:
            assert f"d{i}" not in dropped
        else:
            assert dropped[f"d{i}"]["reason"] == reason, (reason, dropped.get(f"d{i}"))
            assert set(dropped[f"d{i}"]) == {"id", "reason", "value", "text_head"}
    kept = _jsonl(tmp_path / "out" / "docs.jsonl")
    assert [k["id"] for k in kept] == ["d0"]
    assert kept[0]["text"] == REAL.replace("（", "(").replace("）", ")").replace("％", "%")
    import hashlib

    assert kept[0]["sha256"] == hashlib.sha256(kept[0]["text"].encode()).hexdigest()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert list(stats) == FILTERS
    remaining = len(records)
    for f in FILTERS:  # every filter saw what the earlier ones kept, and dropped exactly its example
        assert stats[f]["dropped"] == 1 and stats[f]["kept"] == remaining - 1
        assert stats[f]["examples"][0]["id"] == f"d{list(EXAMPLES).index(f)}"
        remaining -= 1
    counts = result["counts"]
    assert counts["in"] == len(records) and counts["kept"] == 1 and counts["dropped"] == len(records) - 1
    assert all(counts[f"dropped/{f}"] == 1 for f in FILTERS)
    assert result["metrics"]["clean/kept_ratio"] == pytest.approx(1 / len(records))
    assert result["artifacts"] == ["stats.json"]
    assert storage.read_manifest(str(tmp_path / "out"))["meta"]["counts"] == counts


def test_normalisation():
    assert normalize("ＡＢＣ１２３ ｶﾌﾞｼｷｶﾞｲｼｬ　（注）") == "ABC123 カブシキガイシャ (注)"
    assert normalize("売上高は増加しました．営業利益は１，２３４．５百万円です，以上．") == (
        "売上高は増加しました。営業利益は1,234.5百万円です、以上。"
    )
    assert normalize("連絡先：ir＠example．co．jp．") == "連絡先:ir@example.co.jp。"
    assert (
        strip_markup("<p>M&amp;A<br/>を実施</p><script>var x = '<p>';</script>&nbsp;<EMAIL>")
        == "M&A\nを実施\n\xa0<EMAIL>"
    )
    assert (
        normalize("<div>一行目</div><table><tr><td>売上</td><td>1</td></tr></table>").strip()
        == "一行目\n\t売上\t1"
    )


def test_pii_masking():
    text = "電話 03-1234-5678、携帯090-1234-5678、(06)1234-5678、0120-123-456、メール ir.team@yamada-seiki.example.jp。"
    masked, n = mask_pii(text)
    assert masked == "電話 <PHONE>、携帯<PHONE>、<PHONE>、<PHONE>、メール <EMAIL>。" and n == 5
    keep = "売上高は12,345百万円、提出日は2023-06-28、従業員数は1,234名、第24条第1項、比率は0.5%。"
    assert mask_pii(keep) == (keep, 0)


def test_line_removal_and_table_policy():
    assert is_table_line("売上高(百万円)  17,175  18,194  18,616")
    assert is_table_line("回次\t第89期\t第90期\t第91期")
    assert is_table_line("123,456 234,567 345,678")
    assert not is_table_line("当事業年度の売上高は12,345百万円(前期比3.2%増)となりました。")
    assert not is_table_line("1950年4月、東京都において設立しました。")
    assert not is_table_line("(1) 為替変動")
    header = "株式会社テスト(E01234)有価証券報告書"
    text = "\n".join(
        [
            header,
            "一つ目の段落です。",
            "",
            "- 1 -",
            "",
            header,
            "",
            "二つ目の段落です。",
            "このページの先頭へ",
            "- 2 -",
        ]
    )
    assert remove_lines(text, Counter({header: 3})) == "一つ目の段落です。\n二つ目の段落です。"
    assert remove_lines(text, Counter({header: 2})).startswith(header)  # seen twice only: not a header
    assert (
        remove_lines("甲です。\n\n乙です。", Counter()) == "甲です。\n\n乙です。"
    )  # paragraph breaks survive


def test_page_headers_removed_across_sections(tmp_path):
    header = "株式会社テスト(E01234)有価証券報告書"
    body = "当社は精密機械の製造を主な事業としております。工作機械と測定機器を販売しております。"
    more = "当事業年度は新しい工場が稼働し、生産能力が大きく向上しました。今後も設備投資を続けてまいります。"
    records = [
        {"doc_id": "S1", "section": None, "text": header},
        {"doc_id": "S1", "section": "沿革", "text": f"{body}\n\n- 1 -\n\n{header}\n\n{more}"},
        {"doc_id": "S1", "section": "事業の内容", "text": f"{more}\n- 2 -\n{header}\n{body}"},
        {"doc_id": "S2", "section": "沿革", "text": f"{header}\n{body}{more}"},  # another document: seen once
    ]
    clean(_input(tmp_path / "in", records), str(tmp_path / "out"), CleanConfig(), str(tmp_path / "st"))
    kept = {r["id"]: r["text"] for r in _jsonl(tmp_path / "out" / "docs.jsonl")}
    assert kept["d1"] == f"{body}\n{more}" and kept["d2"] == f"{more}\n{body}"
    assert kept["d3"].startswith(header)
    assert [r["reason"] for r in _jsonl(tmp_path / "out" / "dropped.jsonl")] == ["length"]


def test_aho_corasick_matches_brute_force():
    words = ["he", "she", "his", "hers", "アダルト", "ダル", "ルト", "a", "aa"]
    ac = AhoCorasick(words)
    rng = random.Random(0)
    alphabet = "hesiraアダルトx"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        expect = sorted(
            (i, i + len(w)) for w in set(words) for i in range(len(text)) if text.startswith(w, i)
        )
        assert sorted(ac.finditer(text)) == expect
        covered = set()
        for s, e in expect:
            covered.update(range(s, e))
        assert ac.covered(text) == len(covered)
    assert list(AhoCorasick([]).finditer("abc")) == []


def test_top_2gram_share_bounded():
    assert top_2gram_share("ははははは") == 1.0
    assert top_2gram_share("abcdefgh") == pytest.approx(2 / 8)


def test_world_filings_survive_junk_does_not(tmp_path):
    W.generate_world(DemoConfig(), tmp_path / "world")
    ingest([str(tmp_path / "world" / "filings")], str(tmp_path / "ingest"), str(tmp_path / "st"))
    result = clean(str(tmp_path / "ingest"), str(tmp_path / "clean"), CleanConfig(), str(tmp_path / "st"))
    truth = json.loads((tmp_path / "world" / "truth.json").read_text())
    kinds = {d["doc_id"]: d["kind"] for d in truth["documents"]}
    kept = _jsonl(tmp_path / "clean" / "docs.jsonl")
    by_kind = Counter(kinds[r["doc_id"]] for r in kept)
    filings = truth["counts"]
    n_sections = len(W.NARRATIVE_SECTIONS)
    # Every narrative section of every real filing is kept, nothing else.
    assert by_kind == {
        "original": filings["filings"] * n_sections,
        "exact_dup": filings["exact_duplicates"] * n_sections,
        "near_dup": filings["near_duplicates"] * n_sections,
    }
    assert Counter(r["section"] for r in kept) == {
        s: filings["filings"] + filings["exact_duplicates"] + filings["near_duplicates"]
        for s in W.NARRATIVE_SECTIONS
    }
    dropped = _jsonl(tmp_path / "clean" / "dropped.jsonl")
    reasons = {r["id"].split("#")[0].split(":")[0]: r["reason"] for r in dropped if r["reason"] != "section"}
    for j in truth["junk"]:
        assert j["doc_id"] in reasons
    assert reasons[next(j["doc_id"] for j in truth["junk"] if j["kind"] == "ng_spam")] == "ng_words"
    assert reasons[next(j["doc_id"] for j in truth["junk"] if j["kind"] == "stub")] == "length"
    for j in truth["non_japanese"]:
        assert reasons[j["doc_id"]] == "japanese_ratio"
    assert result["counts"]["dropped/section"] == 2 * (
        filings["filings"] + filings["exact_duplicates"] + filings["near_duplicates"]
    )
    # Cleaned text: no markup, no page furniture, no full-width ASCII, PII masked, punctuation normalised.
    companies = json.loads((tmp_path / "world" / "world.json").read_text())["companies"]
    blob = "\n".join(r["text"] for r in kept)
    for bad in (
        "<",
        "&amp;",
        "&nbsp;",
        "このページの先頭へ",
        "Copyright",
        "EDINET閲覧サイト",
        "有価証券報告書\n",
        "，",
        "．",
    ):
        assert bad not in blob.replace("<EMAIL>", "").replace("<PHONE>", ""), bad
    assert not re.search(r"^- \d+ -$", blob, re.M)
    assert not re.search("[０-９Ａ-Ｚａ-ｚｦ-ﾟ]", blob)
    assert "@" not in blob and all(c["phone"] not in blob for c in companies)
    assert blob.count("<EMAIL>") == blob.count("<PHONE>") == len(kept) // n_sections
    assert result["metrics"]["clean/pii_masked"] == 2 * len(kept) // n_sections
    # Facts survive cleaning, e.g. in every kept 事業の内容.
    facts = {c["name"]: c["facts"] for c in companies}
    for r in kept:
        if r["section"] == "事業の内容":
            assert facts[r["company"]]["主な事業"] in r["text"]
    # Cleaned sections of the training filings look like the held-out ones (same normalisation).
    heldout = _jsonl(tmp_path / "world" / "eval" / "heldout.jsonl")
    assert all(W.clean_view(h["text"]) == h["text"] for h in heldout)

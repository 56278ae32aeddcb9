"""Clean: Japanese normalisation, line removal, table policy, PII masking, the quality filters, sharding."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from finmerge.config import CleanConfig, DemoConfig, ParallelConfig
from finmerge.core import storage
from finmerge.corpus import textclean as T
from finmerge.corpus import textquality
from finmerge.corpus.clean import clean, shards
from finmerge.corpus.ingest import ingest
from finmerge.demo import world as W


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _records(records: list[dict]) -> list[dict]:
    return [
        {"id": f"d{i}", "doc_id": None, "section": None, "filing_date": None, **r}
        for i, r in enumerate(records)
    ]


def _input(folder: Path, records: list[dict]) -> str:
    """A committed ingest-like folder holding ``records``."""
    with storage.output_folder(str(folder), str(folder.parent / ".staging")) as out:
        with open(out.path / "docs.jsonl", "w", encoding="utf-8") as fh:
            for rec in _records(records):
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return str(folder)


def _rules(cfg: CleanConfig | None = None) -> T.CompiledRules:
    cfg = cfg or CleanConfig()
    return T.compile_rules(T.Rules(cfg, tuple(cfg.ng_words)))


def _failed(text: str, cfg: CleanConfig | None = None) -> list[str]:
    """Every filter the cleaned ``text`` fails (not only the first)."""
    lines = T.normalize_lines(text)
    cleaned, _, _ = T.mask_pii(T.remove_lines(lines, T.repeated_lines([lines])))
    return [f.filter for f in T.failures(cleaned, _rules(cfg))]


REAL = (
    "当社は精密機械の製造を主な事業としております。当事業年度の売上高は12,345百万円（前期比3.2％増）となりました。"
    "工作機械の販売が堅調に推移したほか、測定機器も前期を上回りました。"
)
# One document per filter that fails that filter and no other (checked by test_examples_fail_only_their_filter).
EXAMPLES = {
    None: REAL,
    "section": "【提出書類】　有価証券報告書\n【会社名】　株式会社テスト\n"
    + REAL,  # fine text, dropped section
    "length": "これは短いけれども正しい文章です。",
    "ng_words": "今すぐクリックして登録してください。出会い系のサイトではありません。カジノ無料の案内でもありません。"
    "普通のお知らせとして読んでいただければ幸いです。今後ともよろしくお願いいたします。",
    "japanese_ratio": "The Annual Securities Report によると、net sales は increased by four percent でした。"
    "Operating income も improved significantly とのことです。Management expects further growth です。",
    "hiragana_ratio": "株式会社東京精密機械製作所代表取締役社長山田太郎就任記念式典開催決定、本社工場新設計画発表、"
    "海外子会社設立準備室設置、中期経営計画策定委員会発足、新製品開発部門統合完了報告書提出済、情報システム刷新計画承認。",
    "katakana_ratio": "グループのコーポレートガバナンスコードとコンプライアンスポリシーをアップデートしました。"
    "サステナビリティレポートのダイジェストバージョンもウェブサイトにアップロードしました。",
    "symbol_ratio": "★☆★新商品のご案内です★☆★\n◆◇◆とてもお得な情報があります◆◇◆\n■□■ぜひ一度お試しください■□■\n"
    "▲△▲今なら送料が無料になります▲△▲\n●○●お申し込みはお早めにどうぞ●○●",
    "digit_ratio": "売上高は123456789円となりました。営業利益は98765432円でした。経常利益は11223344円、純利益は9988776円と"
    "なっています。総資産は12345678円です。",
    "sentence_length": "当社は創業以来地域の皆様とともに歩んでまいりましたが、近年は海外市場への進出を加速させており、"
    "アジアや欧州の各拠点で生産体制の整備を進めるとともに、現地の人材を積極的に採用して組織の多様化を図っているほか、"
    "研究開発の分野でも大学や研究機関との連携を深めながら次世代の製品づくりに取り組んでおり、環境負荷の低減に向けた"
    "新しい素材の開発や省エネルギー型の設備への更新も計画的に実施しているため、中長期的な成長の基盤は着実に強化されつつ"
    "あるものと考えておりますが、原材料価格の高騰や為替の変動といった外部環境の不確実性は依然として高く、引き続き慎重な"
    "経営判断が求められる状況にあることから、経営陣は定期的にリスクの洗い出しを行い対応策を検討しております",
    "dup_line_ratio": "当社は精密機械の製造を主な事業としており、工作機械と測定機器の販売を国内外で展開しております。\n"
    "以上のとおりです。\nご確認ください。\n以上のとおりです。\nご確認ください。\n"
    "当事業年度は新しい工場が稼働し、生産能力が大きく向上したことから、来期も設備投資を続けてまいります。",
    "top_ngram_share": "わ"
    + "は" * 48
    + "、とても楽しい一日でしたね。みんなで大きな声を出して笑いました。また遊びに行きたいと思います。",
    "dup_ngram_share": "当社は精密機械の製造を主な事業とし、工作機械と測定機器を国内外で販売しています。" * 2
    + "詳細は後述します。",
}


def test_examples_fail_only_their_filter():
    for reason, text in EXAMPLES.items():
        assert _failed(text) == ([reason] if reason not in (None, "section") else []), reason


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
            assert set(dropped[f"d{i}"]) == {"id", "reason", "value", "detail", "text_head"}
    kept = _jsonl(tmp_path / "out" / "docs.jsonl")
    assert [k["id"] for k in kept] == ["d0"]
    assert kept[0]["text"] == REAL.replace("（", "(").replace("）", ")").replace("％", "%")
    assert kept[0]["sha256"] == hashlib.sha256(kept[0]["text"].encode()).hexdigest()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert list(stats) == T.FILTERS == [r for r in EXAMPLES if r]
    remaining = len(records)
    for f in T.FILTERS:  # every filter saw what the earlier ones kept, and dropped exactly its example
        assert stats[f]["dropped"] == 1 and stats[f]["kept"] == remaining - 1
        example = stats[f]["examples"][0]
        assert example["id"] == f"d{list(EXAMPLES).index(f)}"
        assert isinstance(example["value"], float) and example["head"]
        remaining -= 1
    counts = result["counts"]
    assert counts["in"] == len(records) and counts["kept"] == 1 and counts["dropped"] == len(records) - 1
    assert all(counts[f"dropped/{f}"] == 1 for f in T.FILTERS)
    assert result["metrics"]["clean/kept_ratio"] == pytest.approx(1 / len(records))
    assert result["metrics"]["clean/chars_per_s"] > 0
    assert result["artifacts"] == ["stats.json"]
    manifest = storage.read_manifest(str(tmp_path / "out"))
    assert manifest["meta"]["counts"] == counts
    # The Prefect table rows say what stats.json says.
    rows = result["tables"]["clean-filters"]
    assert [r["filter"] for r in rows] == T.FILTERS
    for row in rows:
        st = stats[row["filter"]]
        assert (row["kept"], row["dropped"], row["threshold"]) == (st["kept"], st["dropped"], st["threshold"])
        assert row["example"].startswith(f"{st['examples'][0]['id']}: {st['examples'][0]['value']} ")
    assert stats["hiragana_ratio"]["threshold"] == ">= 0.1"
    assert manifest["meta"]["tables"] == result["tables"]


# Per filter: a config change that lets its example through, and one that drops the good filing section.
LOOSEN_TIGHTEN = {
    "section": ({"drop_sections": []}, {"drop_sections": ["本文", "表紙"]}),
    "length": ({"min_chars": 10}, {"min_chars": 1000}),
    "ng_words": (
        {"max_ng_word_ratio": 0.5},
        {"ng_words": ["精密機械", "出会い系"], "max_ng_word_ratio": 0.01},
    ),
    "japanese_ratio": ({"min_japanese_ratio": 0.1}, {"min_japanese_ratio": 0.95}),
    "hiragana_ratio": ({"min_hiragana_ratio": 0.0}, {"min_hiragana_ratio": 0.5}),
    "katakana_ratio": ({"max_katakana_ratio": 0.9}, {"max_katakana_ratio": 0.0}),
    "symbol_ratio": ({"max_symbol_ratio": 0.6}, {"max_symbol_ratio": 0.0}),
    "digit_ratio": ({"max_digit_ratio": 0.6}, {"max_digit_ratio": 0.01}),
    "sentence_length": ({"max_mean_sentence_chars": 1000}, {"min_mean_sentence_chars": 50}),
    "dup_line_ratio": ({"max_dup_line_ratio": 0.5}, {}),
    "top_ngram_share": (
        {"max_top_ngram_share": {2: 0.9, 3: 0.9, 4: 0.9}},
        {"max_top_ngram_share": {2: 0.01}},
    ),
    "dup_ngram_share": ({"max_dup_ngram_share": {5: 1.0}}, {"max_dup_ngram_share": {5: 0.01}}),
}


GOOD_WITH = {"symbol_ratio": "★", "katakana_ratio": "メーカー各社の動向も注視しております。"}


@pytest.mark.parametrize("name", T.FILTERS)
def test_thresholds_come_from_config(tmp_path, name):
    records = [
        {"text": REAL, "section": "本文", "doc_id": "good"},
        {"text": EXAMPLES[name], "section": "表紙" if name == "section" else "本文", "doc_id": "bad"},
    ]
    src = _input(tmp_path / "in", records)
    loosen, tighten = LOOSEN_TIGHTEN[name]
    loose = clean(src, str(tmp_path / "loose"), CleanConfig(**loosen), str(tmp_path / "st"))
    assert loose["counts"]["kept"] == 2, _jsonl(tmp_path / "loose" / "dropped.jsonl")
    if name in GOOD_WITH:  # the good section has none of what the filter measures: add some
        records[0]["text"] = REAL + GOOD_WITH[name]
        src = _input(tmp_path / "in2", records)
    if tighten:
        tight = clean(src, str(tmp_path / "tight"), CleanConfig(**tighten), str(tmp_path / "st"))
        assert tight["counts"][f"dropped/{name}"] == 2


def test_ng_words_aho_corasick_and_word_file(tmp_path):
    words = tmp_path / "ng.txt"
    words.write_text("# NG list\n反社会的勢力\n\n架空取引\n", encoding="utf-8")
    text = (
        "当社は反社会的勢力との関係を一切持たず、架空取引も行っておりません。" * 2
        + "以上のとおりです。今後も法令を遵守してまいります。"
    )
    rules = _rules(CleanConfig(ng_words=[], ng_words_uri=str(words)))
    assert rules.automaton is None  # the word file is read by the stage, not by the worker
    cfg = CleanConfig(ng_words=[], ng_words_uri=str(words), max_ng_word_ratio=0.1)
    records = [{"text": REAL, "doc_id": "a"}, {"text": text, "doc_id": "b"}]
    result = clean(_input(tmp_path / "in", records), str(tmp_path / "out"), cfg, str(tmp_path / "st"))
    (row,) = _jsonl(tmp_path / "out" / "dropped.jsonl")
    assert row["reason"] == "ng_words" and row["value"] == pytest.approx(round(20 / len(text), 4))
    assert result["counts"]["kept"] == 1
    # Full-width words in the list match the NFKC text; overlapping matches are counted once.
    ac = T.ng_automaton(["ＡＢＣ", "BCD", "アダルト", "ダル"])
    assert T.ng_covered("xABCDx アダルト", ac) == 4 + 4
    assert T.ng_automaton([" ", ""]) is None and T.ng_covered("abc", None) == 0


def test_ng_covered_matches_brute_force():
    words = ["he", "she", "his", "hers", "アダルト", "ダル", "ルト", "a", "aa"]
    ac = T.ng_automaton(words)
    rng = random.Random(0)
    for trial in range(300):
        alphabet = "hesiraアダルトx" if trial % 2 else "アダルトh"  # the second makes overlapping hits common
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        covered = {
            j for w in words for i in range(len(text)) if text.startswith(w, i) for j in range(i, i + len(w))
        }
        assert T.ng_covered(text, ac) == len(covered)


def test_normalisation():
    assert T.normalize("ＡＢＣ１２３ ｶﾌﾞｼｷｶﾞｲｼｬ　（注）") == "ABC123 カブシキガイシャ (注)"
    assert T.normalize("売上高は増加しました．営業利益は１，２３４．５百万円です，以上．") == (
        "売上高は増加しました。営業利益は1,234.5百万円です、以上。"
    )
    assert T.normalize("連絡先：ir＠example．co．jp．") == "連絡先:ir@example.co.jp。"
    assert T.normalize("，，先頭と末尾．") == "、、先頭と末尾。"
    assert (
        T.strip_markup("<p>M&amp;A<br/>を実施</p><script>var x = '<p>';</script>&nbsp;<EMAIL>")
        == "M&A\nを実施\n\xa0<EMAIL>"
    )
    assert (
        T.normalize("<div>一行目</div><table><tr><td>売上</td><td>1</td></tr></table>") == "一行目\n売上\t1"
    )
    # Windows / old-Mac line ends and form feeds are line breaks; invisible characters go.
    assert (
        T.normalize("一行目\r\n二\u200b行目\r三行目\x0c四\ufeff行目\x00") == "一行目\n二行目\n三行目\n四行目"
    )
    assert T.normalize("壊れた\ud800文字") == "壊れた文字"


def test_pii_masking():
    text = "電話 03-1234-5678、携帯090-1234-5678、(06)1234-5678、0120-123-456、+81 03-1234-5678、+81-3-1234-5678、+81 90 1234 5678、メール ir.team@yamada-seiki.example.jp。"
    masked, n_mail, n_phone = T.mask_pii(text)
    assert (
        masked == "電話 <PHONE>、携帯<PHONE>、<PHONE>、<PHONE>、<PHONE>、<PHONE>、<PHONE>、メール <EMAIL>。"
    )
    assert (n_mail, n_phone) == (1, 7)
    keep = (
        "売上高は12,345百万円、提出日は2023-06-28、従業員数は1,234名、第24条第1項、比率は0.5%、"
        "証券コード 01234、口座 1203-1234-5678、期間 2021-04-01 2022-03-31。"
    )
    assert T.mask_pii(keep) == (keep, 0, 0)
    assert T.mask_pii("番号5+81 03-1234-5678まで")[0] == "番号5+81 <PHONE>まで"  # looks past a digit glued on


def test_mask_names(tmp_path):
    officers = "代表取締役社長　山田　太郎\n取締役 佐藤花子は、営業本部を担当しております。\n監査役 高橋 さくら 1960年4月1日生"
    masked, n = T.mask_names(T.normalize(officers))
    assert (
        masked
        == "代表取締役社長 <NAME>\n取締役 <NAME>は、営業本部を担当しております。\n監査役 <NAME> 1960年4月1日生"
    )
    assert n == 3
    assert T.mask_names("代表取締役 社長執行役員 鈴木 一郎")[0] == "代表取締役 社長執行役員 <NAME>"
    for text in (
        "代表取締役社長に就任しました。",
        "取締役会 において決議",
        "取締役 全員が出席",
        "代表取締役社長山田太郎は",
    ):
        assert T.mask_names(text) == (text, 0), text
    body = REAL + "\n代表取締役社長 山田 太郎"
    src = _input(tmp_path / "in", [{"text": body}])
    off = clean(src, str(tmp_path / "off"), CleanConfig(), str(tmp_path / "st"))
    on = clean(src, str(tmp_path / "on"), CleanConfig(mask_names=True), str(tmp_path / "st"))
    assert (
        "山田" in _jsonl(tmp_path / "off" / "docs.jsonl")[0]["text"]
        and off["metrics"]["clean/pii_masked/name"] == 0
    )
    assert _jsonl(tmp_path / "on" / "docs.jsonl")[0]["text"].endswith("代表取締役社長 <NAME>")
    assert on["metrics"]["clean/pii_masked/name"] == 1


def test_line_removal_and_table_policy():
    assert T.is_table_line("売上高(百万円)  17,175  18,194  18,616")
    assert T.is_table_line("回次\t第89期\t第90期\t第91期")
    assert T.is_table_line("123,456 234,567 345,678")
    assert T.is_table_line("| 売上高 | 1,234 | 2,345 |")
    assert not T.is_table_line("当事業年度の売上高は12,345百万円(前期比3.2%増)となりました。")
    assert not T.is_table_line("1950年4月、東京都において設立しました。")
    assert not T.is_table_line("(1) 為替変動")
    assert not T.is_table_line("事業の内容  当社グループ  主要な製品")  # cells, but no figures
    header = "株式会社テスト(E01234)有価証券報告書"
    lines = [
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
    assert T.remove_lines(lines, Counter({header: 3})) == "一つ目の段落です。\n二つ目の段落です。"
    assert T.remove_lines(lines, Counter({header: 2})).startswith(header)  # seen twice only: not a header
    assert (
        T.remove_lines(["甲です。", "", "乙です。"], Counter()) == "甲です。\n\n乙です。"
    )  # paragraphs survive
    furniture = [
        "本文です。",
        "COPYRIGHT 2023 Example Inc.",
        "(c) Example",
        "p. 12",
        "3/10",
        "書類一覧 | ヘルプ",
        "続きです。",
    ]
    assert T.remove_lines(furniture, Counter()) == "本文です。\n続きです。"
    assert T.boilerplate_lines(["İİİ", "Copyright x"]) == {1}  # a lower case that changes length: regex path


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


def _dup_share_brute(s: str, n: int) -> float:
    grams = Counter(s[i : i + n] for i in range(len(s) - n + 1))
    covered = {j for i in range(len(s) - n + 1) if grams[s[i : i + n]] > 1 for j in range(i, i + n)}
    return len(covered) / len(s) if s else 0.0


def _top_share_brute(s: str, n: int) -> float:
    grams = Counter(s[i : i + n] for i in range(len(s) - n + 1))
    if not grams or max(grams.values()) < 2:
        return 0.0
    top = max(grams, key=lambda g: (grams[g], -s.index(g)))  # numpy's tie-break differs; shares are compared
    covered = {j for i in range(len(s) - n + 1) if s[i : i + n] == top for j in range(i, i + n)}
    return len(covered) / len(s)


def test_ngram_measures_match_brute_force():
    rng = random.Random(1)
    dup_limits = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    top_limits = {2: 0.2, 3: 0.18, 4: 0.16}
    for trial in range(400):
        alphabet = "あいうえお"[: rng.randint(2, 5)] if trial % 2 else "abcdefghijklmnopqrstuvwxyz"
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        if trial % 3 == 0 and s:
            s = s + s[: rng.randint(0, len(s))]  # a repeated block
        cp = T.code_points(s)
        for n in range(5, 11):
            h = T.ngram_hashes(cp, n)
            got = textquality._covered(T.duplicated_starts(h), n, len(cp)) / len(cp) if len(cp) >= n else 0.0
            assert got == pytest.approx(_dup_share_brute(s, n)), (s, n)
        for n in range(
            6, 11
        ):  # the pruned search (repeats only where two repeated (n-1)-grams overlap) is exact
            limits = {m: (0.0 if m == n else 1.0) for m in range(5, n + 1)}
            share = _dup_share_brute(s, n)
            got = T.dup_ngram_failure(cp, limits)
            assert (got is None and share == 0) or got == (n, pytest.approx(share)), (s, n, got, share)
        expect = next(
            ((n, _dup_share_brute(s, n)) for n in dup_limits if _dup_share_brute(s, n) > dup_limits[n]), None
        )
        got = T.dup_ngram_failure(cp, dup_limits)
        assert (got is None) == (expect is None) and (got is None or got == pytest.approx(expect)), s
        for n in top_limits:
            grams = Counter(s[i : i + n] for i in range(len(s) - n + 1))
            if grams and list(grams.values()).count(max(grams.values())) == 1:  # a unique top n-gram
                assert T.top_ngram_share(cp, n)[0] == pytest.approx(_top_share_brute(s, n))
    assert T.top_ngram_share(T.code_points("ははははは"), 2) == (1.0, 4)
    assert T.top_ngram_share(T.code_points("abcdefgh"), 2) == (0.0, 1)  # nothing repeats
    assert T.top_ngram_failure(T.code_points("abab" + "cdefghijklmnopqrstuvwxyz"), {2: 0.1}) == (2, 4 / 28)


def test_char_classes():
    m = T.Measures("ひらがな カタカナ 漢字々 123 ★☆ abc、。\n𠮷")
    counts = m.class_counts
    assert counts[T.HIRAGANA] == 4 and counts[T.KATAKANA] == 4 and counts[T.KANJI] == 4
    assert counts[T.DIGIT] == 3 and counts[T.SYMBOL] == 2 and counts[T.OTHER] == 5
    assert m.n_solid == 22 and m.ratio(T.SYMBOL) == pytest.approx(2 / 22)
    assert T.Measures("一文目です。二文目です。三").mean_sentence_length() == pytest.approx(13 / 3)
    assert T.Measures("甲\n乙\n甲\n").dup_line_ratio() == pytest.approx(1 / 3)


def test_shards_keep_documents_whole():
    recs = [{"id": f"r{i}", "doc_id": f"D{i // 3}"} for i in range(10)] + [{"id": "x"}, {"id": "y"}]
    got = list(shards(iter(recs), 4))
    assert [r for s in got for r in s] == recs
    for s in got:
        assert len(s) <= 6
        keys = [T.group_key(r) for r in s]
        assert all(k not in {T.group_key(r) for o in got if o is not s for r in o} for k in keys)
    assert [len(s) for s in list(shards(iter(recs), 1))] == [3, 3, 3, 1, 1, 1]


def test_serial_and_process_backends_write_identical_output(tmp_path):
    W.generate_world(DemoConfig(n_companies=6), tmp_path / "world")
    ingest([str(tmp_path / "world" / "filings")], str(tmp_path / "ingest"), str(tmp_path / "st"))
    outputs = {}
    for backend in ("serial", "process"):
        par = ParallelConfig(backend=backend, workers=2, shard_docs=7)
        res = clean(
            str(tmp_path / "ingest"), str(tmp_path / backend), CleanConfig(), str(tmp_path / "st"), par
        )
        outputs[backend] = (
            res["digest"],
            res["counts"],
            {f: (tmp_path / backend / f).read_bytes() for f in ("docs.jsonl", "dropped.jsonl", "stats.json")},
        )
    assert outputs["serial"] == outputs["process"]
    assert outputs["serial"][1]["kept"] > 0


def test_plain_jsonl_file_input(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = _records([{"text": REAL}, {"text": EXAMPLES["length"]}])
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = clean(str(path), str(tmp_path / "out"), CleanConfig(), str(tmp_path / "st"))
    assert result["counts"] == {**result["counts"], "in": 2, "kept": 1, "dropped/length": 1}
    with pytest.raises(storage.StorageError):
        clean(str(tmp_path / "missing.jsonl"), str(tmp_path / "out2"), CleanConfig(), str(tmp_path / "st"))


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
    heldout = [
        h
        for split in ("validation", "test")
        for h in _jsonl(tmp_path / "world" / "eval" / split / "heldout.jsonl")
    ]
    assert heldout
    assert all(W.clean_view(h["text"]) == h["text"] for h in heldout)
    assert np.isfinite(result["metrics"]["clean/chars_per_s"])

"""Hugging Face datasets in and out of the corpus stages.

In: ``save_to_disk`` folders (Dataset, DatasetDict), ``.parquet`` and ``.arrow`` files and JSONL written by
``datasets`` are ingested with the text column and metadata columns of ``corpus.ingest``, locally and on S3;
bad rows are quarantined with the source, the row and the reason while the good rows are kept; an unchanged
dataset is skipped on the next run. Out: the dedup folder is a parquet dataset with a card that
``datasets.load_dataset`` reads back; ``dataset_description`` says what a dataset is for ``mlflow.log_input``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
import yaml

from finmerge.config import DedupConfig, IngestConfig, ParallelConfig
from finmerge.core import storage
from finmerge.corpus import hf_export
from finmerge.corpus.dataset_info import dataset_description
from finmerge.corpus.dedup import dedup
from finmerge.corpus.ingest import ingest
from finmerge.corpus.textio import EmptyInputError

datasets.disable_progress_bars()

TEXTS = [
    "当社グループは銀行業を中心に、リース業その他の金融サービスを提供しております。",
    None,  # no text: quarantined
    "   ",  # empty text: quarantined
    "当社は損害保険業を営んでおり、自動車保険と火災保険が主な商品であります。",
    "あ" * 400_000,  # 1.2 MB of UTF-8: longer than max_line_mb = 1, quarantined
    "当連結会計年度の経常収益は前期比で増加いたしました。",
]
GOOD = [0, 3, 5]
ROWS = {
    "body": TEXTS,
    "filer": [f"株式会社テスト{i}" for i in range(6)],
    "code": [f"E0000{i}" for i in range(6)],
    "date": [f"2023-06-2{i}" for i in range(6)],
    "heading": ["事業の内容", "事業の内容", "沿革", "事業等のリスク", "沿革", "経営者による分析"],
    "doc_id": [f"S100{i}" for i in range(6)],
    "pages": [10, 11, 12, 13, 14, 15],
}
CFG = IngestConfig(
    text_field="body",
    metadata_columns={"filer": "company", "code": "edinet_code", "date": "filing_date", "heading": "section"},
    max_line_mb=1,
)
SERIAL = ParallelConfig(backend="serial")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _write_sources(src: Path) -> datasets.Dataset:
    """The same six rows as every kind of dataset source, plus broken ones."""
    ds = datasets.Dataset.from_dict(ROWS)
    src.mkdir(parents=True)
    ds.save_to_disk(str(src / "saved"))
    other = datasets.Dataset.from_dict(
        {**{k: v[:1] for k, v in ROWS.items()}, "body": ["検証用の文書です。"]}
    )
    datasets.DatasetDict({"train": ds, "test": other}).save_to_disk(str(src / "splits"))
    ds.to_parquet(str(src / "table.parquet"))
    with pa.OSFile(str(src / "table.arrow"), "wb") as sink, pa.ipc.new_file(sink, ds.data.table.schema) as w:
        w.write_table(
            ds.data.table
        )  # the Arrow IPC file format (save_to_disk folders hold the stream format)
    ds.to_json(str(src / "lines.jsonl"), force_ascii=False)
    (src / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file")
    datasets.Dataset.from_dict({"content": ["本文"]}).to_parquet(str(src / "no_text_column.parquet"))
    datasets.Dataset.from_dict({"body": [1, 2]}).to_parquet(str(src / "int_text.parquet"))
    return ds


def _check_records(docs: list[dict], source: str, fmt: str) -> None:
    recs = [d for d in docs if d["source"] == source]
    assert [r["text"] for r in recs] == [TEXTS[i] for i in GOOD], source
    assert [(r["company"], r["edinet_code"], r["filing_date"], r["section"]) for r in recs] == [
        (ROWS["filer"][i], ROWS["code"][i], ROWS["date"][i], ROWS["heading"][i]) for i in GOOD
    ]
    assert [r["id"].split("~")[0] for r in recs] == [f"S100{i}#0" for i in GOOD] and {
        r["format"] for r in recs
    } == {fmt}
    assert [r["meta"] for r in recs] == [{"pages": ROWS["pages"][i]} for i in GOOD]  # unmapped: kept


def _check_quarantine(rows: list[dict], source: str) -> None:
    where = {(r.get("row"), r["line"]): r["reason"] for r in rows if r["source"] == source}
    first = 1 if source.endswith(".jsonl") else 0  # JSONL: 1-based lines; datasets: 0-based rows
    key = (lambda i: (None, i + 1)) if first else (lambda i: (i, None))
    assert where[key(1)].startswith("missing text"), where
    assert where[key(2)] == "empty text"
    assert where[key(4)].startswith(("text too long", "line too long"))
    assert len(where) == 3


def test_dataset_sources_ingested_with_metadata_mapped_and_bad_rows_quarantined(tmp_path):
    src = tmp_path / "src"
    _write_sources(src)
    r = ingest([str(src)], str(tmp_path / "out"), str(tmp_path / "stg"), CFG, parallel=SERIAL)
    docs, quarantine = _jsonl(tmp_path / "out/docs.jsonl"), _jsonl(tmp_path / "out/quarantine.jsonl")
    for name, fmt in [
        ("saved", "dataset"),
        ("splits", "dataset"),
        ("table.parquet", "parquet"),
        ("table.arrow", "arrow"),
        ("lines.jsonl", "jsonl"),
    ]:
        _check_records(docs, str(src / name), fmt)
        _check_quarantine(quarantine, str(src / name))
    assert "検証用の文書です。" not in {d["text"] for d in docs}  # only the configured split is read
    whole = {Path(q["source"]).name: q["reason"] for q in quarantine if q["line"] is None and "row" not in q}
    assert whole["corrupt.parquet"].startswith("unreadable dataset: ArrowInvalid")
    assert whole["no_text_column.parquet"] == "missing text: no column 'body' (columns: content)"
    reasons = [q["reason"] for q in quarantine if q["source"].endswith("int_text.parquet")]
    assert reasons == ["missing text: 'body' holds int, not a string"] * 2
    assert "Traceback" not in (tmp_path / "out/quarantine.jsonl").read_text()
    counts = r["counts"]
    assert counts["files"] == 8 and counts["files/dataset"] == 2 and counts["docs/parquet"] == 3
    manifest = {Path(m["uri"]).name: m for m in _jsonl(tmp_path / "out/manifest.jsonl")}
    assert manifest["saved"]["status"] == "ingested" and manifest["saved"]["quarantined_lines"] == 3
    assert manifest["corrupt.parquet"]["status"] == "quarantined"
    assert not any(name.startswith("data-") for name in manifest)  # a save_to_disk folder is one source


def test_split_is_configurable_and_a_missing_split_is_quarantined(tmp_path):
    src = tmp_path / "src"
    _write_sources(src)
    cfg = CFG.model_copy(update={"dataset_split": "test"})
    ingest([str(src / "splits")], str(tmp_path / "out"), str(tmp_path / "stg"), cfg, parallel=SERIAL)
    assert [d["text"] for d in _jsonl(tmp_path / "out/docs.jsonl")] == ["検証用の文書です。"]
    cfg = CFG.model_copy(update={"dataset_split": "validation"})
    with pytest.raises(
        EmptyInputError, match=r"no split 'validation' in the DatasetDict \(splits: train, test\)"
    ):
        ingest([str(src / "splits")], str(tmp_path / "out2"), str(tmp_path / "stg"), cfg, parallel=SERIAL)


def test_unchanged_datasets_are_skipped_and_a_changed_one_is_read_again(tmp_path):
    src = tmp_path / "src"
    ds = _write_sources(src)
    first = ingest([str(src)], str(tmp_path / "b1"), str(tmp_path / "stg"), CFG, parallel=SERIAL)
    again = ingest(
        [str(src)], str(tmp_path / "b2"), str(tmp_path / "stg"), CFG, prev_uri=str(tmp_path / "b1")
    )
    assert again["counts"]["docs"] == 0 and again["counts"]["unchanged_files"] == first["counts"]["files"]
    shutil.rmtree(src / "saved")
    new_row = {k: [v[0]] for k, v in ROWS.items()} | {
        "body": ["新しく追加された文書です。"],
        "doc_id": ["S1009"],
    }
    datasets.concatenate_datasets([ds, datasets.Dataset.from_dict(new_row)]).save_to_disk(str(src / "saved"))
    third = ingest(
        [str(src)], str(tmp_path / "b3"), str(tmp_path / "stg"), CFG, prev_uri=str(tmp_path / "b2")
    )
    assert third["counts"]["changed_files"] == 1 and third["counts"]["unchanged_files"] == 7
    assert {d["source"] for d in _jsonl(tmp_path / "b3/docs.jsonl")} == {str(src / "saved")}
    assert "新しく追加された文書です。" in {d["text"] for d in _jsonl(tmp_path / "b3/docs.jsonl")}


def test_dataset_sources_on_s3(tmp_path, s3_bucket):
    src = tmp_path / "src"
    _write_sources(src)
    fs, _ = storage.filesystem(f"s3://{s3_bucket}")
    for name in ("saved", "splits", "table.parquet", "corrupt.parquet"):
        fs.put(str(src / name), f"{s3_bucket}/raw/{name}", recursive=True)
    raw, out = f"s3://{s3_bucket}/raw", f"s3://{s3_bucket}/runs/ingest"
    r = ingest([raw], out, str(tmp_path / "stg"), CFG)
    docs = [json.loads(x) for x in storage.read_text(f"{out}/docs.jsonl").splitlines()]
    quarantine = [json.loads(x) for x in storage.read_text(f"{out}/quarantine.jsonl").splitlines()]
    for name, fmt in [("saved", "dataset"), ("splits", "dataset"), ("table.parquet", "parquet")]:
        _check_records(docs, f"{raw}/{name}", fmt)
        _check_quarantine(quarantine, f"{raw}/{name}")
    assert any(
        q["source"] == f"{raw}/corrupt.parquet" and q["reason"].startswith("unreadable") for q in quarantine
    )
    assert r["counts"]["files"] == 4 and r["counts"]["docs"] == 9
    again = ingest([raw], out + "-2", str(tmp_path / "stg"), CFG, prev_uri=out)
    assert again["counts"]["docs"] == 0 and again["counts"]["unchanged_files"] == 4


def test_process_pool_parses_datasets_like_serial(tmp_path):
    src = tmp_path / "src"
    ds = _write_sources(src)
    for i in range(16):  # more files than one shard of work (16), so that two workers get some
        ds.select([i % 6]).save_to_disk(str(src / f"more/saved-{i}"))
    ingest([str(src)], str(tmp_path / "serial"), str(tmp_path / "stg"), CFG, parallel=SERIAL)
    pool = ParallelConfig(backend="process", workers=2)
    ingest([str(src)], str(tmp_path / "pool"), str(tmp_path / "stg"), CFG, parallel=pool)
    assert len(_jsonl(tmp_path / "pool/docs.jsonl")) == 15 + 8
    for name in ("docs.jsonl", "quarantine.jsonl"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes()


def _corpus_rows(n: int) -> dict:
    """``n`` distinct filings plus an exact copy and a near copy of the first one."""
    base = [
        f"第{i}期の事業の状況について、当社{i}は売上高{i * 7}億円を計上し、利益も増加いたしました。" * 3
        for i in range(n)
    ]
    texts = [*base, base[0], base[0].replace("増加", "大幅に増加", 1)]
    return {
        "body": texts,
        "filer": [f"会社{i % n}" for i in range(len(texts))],
        "date": [f"2023-06-{10 + i % 15:02d}" for i in range(len(texts))],
    }


def test_dedup_folder_is_a_parquet_dataset_that_datasets_reads_back(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_export, "SHARD_BYTES", 2000)  # several shards from a small corpus
    src = tmp_path / "src"
    src.mkdir()
    datasets.Dataset.from_dict(_corpus_rows(12)).to_parquet(str(src / "corpus.parquet"))
    ingest([str(src)], str(tmp_path / "ing"), str(tmp_path / "stg"), CFG, parallel=SERIAL)
    r = dedup(str(tmp_path / "ing"), str(tmp_path / "dd"), DedupConfig(), str(tmp_path / "stg"))
    kept = _jsonl(tmp_path / "dd/docs.jsonl")
    assert r["counts"]["kept"] == len(kept) == 12 and r["counts"]["exact_dups"] == 1
    shards = sorted((tmp_path / "dd/data").glob("train-*.parquet"))
    assert len(shards) > 1 and all(p.name.endswith(f"-of-{len(shards):05d}.parquet") for p in shards)
    assert set(r["dataset"]["files"]) <= set(storage.read_manifest(str(tmp_path / "dd"))["files"])

    files = str(tmp_path / "dd/data/train-*.parquet")
    cache = str(tmp_path / "hf-cache")  # not the user's ~/.cache
    by_files = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache)
    by_folder = datasets.load_dataset(str(tmp_path / "dd"), split="train", cache_dir=cache)
    for ds in (by_files, by_folder):
        assert ds.num_rows == 12 and ds["id"] == [k["id"] for k in kept]
        assert ds["text"] == [k["text"] for k in kept] and ds["company"] == [k["company"] for k in kept]
        assert ds[0]["filing_date"] == kept[0]["filing_date"] and ds[0]["meta"] is None

    header = yaml.safe_load((tmp_path / "dd/README.md").read_text(encoding="utf-8").split("---")[1])
    assert header["license"] == "other" and header["language"] == ["ja"]
    assert header["configs"][0]["data_files"][0]["path"] == "data/train-*.parquet"
    assert [f["name"] for f in header["dataset_info"]["features"]] == list(hf_export.COLUMNS)
    card = (tmp_path / "dd/README.md").read_text(encoding="utf-8")
    ingest_digest = storage.read_manifest(str(tmp_path / "ing"))["digest"]
    assert "kept: 12" in card and "exact duplicates: 1" in card and ingest_digest in card

    d = dataset_description(str(tmp_path / "dd"), r["digest"], "corpus")
    assert (d["num_rows"], d["num_files"], d["format"]) == (12, len(shards), "parquet")
    assert d["schema"][:2] == [{"name": "id", "type": "string"}, {"name": "text", "type": "string"}]
    assert d["source"] == str(tmp_path / "dd") and d["digest"] == r["digest"]


def test_parquet_and_jsonl_corpus_give_the_same_kept_documents(tmp_path):
    ds = datasets.Dataset.from_dict(_corpus_rows(8))
    (tmp_path / "p").mkdir()
    (tmp_path / "j").mkdir()
    ds.to_parquet(str(tmp_path / "p/corpus.parquet"))
    ds.to_json(str(tmp_path / "j/corpus.jsonl"), force_ascii=False)
    kept = {}
    for kind in ("p", "j"):
        ingest(
            [str(tmp_path / kind)], str(tmp_path / f"{kind}-ing"), str(tmp_path / "stg"), CFG, parallel=SERIAL
        )
        dedup(
            str(tmp_path / f"{kind}-ing"), str(tmp_path / f"{kind}-dd"), DedupConfig(), str(tmp_path / "stg")
        )
        kept[kind] = [
            {k: v for k, v in row.items() if k not in ("source", "format")}
            for row in datasets.load_dataset(
                str(tmp_path / f"{kind}-dd"), split="train", cache_dir=str(tmp_path / "hf-cache")
            )
        ]
    assert len(kept["p"]) == 8 and kept["p"] == kept["j"]


def test_dataset_description_of_sources_and_its_mlflow_schema(tmp_path):
    from mlflow.types import Schema

    src = tmp_path / "src"
    _write_sources(src)
    for name, fmt, rows in [
        ("saved", "arrow", 6),
        ("splits", "arrow", 6),
        ("table.arrow", "arrow", 6),
        ("table.parquet", "parquet", 6),
        ("lines.jsonl", "jsonl", 6),
    ]:
        d = dataset_description(str(src / name), "d1", name)
        assert (d["format"], d["num_rows"]) == (fmt, rows), name
        assert [c["name"] for c in d["schema"]] == list(ROWS), name
        types = {c["name"]: c["type"] for c in Schema.from_json(json.dumps(d["mlflow_schema"])).to_dict()}
        assert types["body"] == "string" and types["pages"] == "long", name


def test_a_file_named_like_a_pattern_is_read_as_itself(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    datasets.Dataset.from_dict({"body": ["角括弧の名前のファイルです。"]}).to_parquet(
        str(src / "odd[1].parquet")
    )
    datasets.Dataset.from_dict({"body": ["パターンに一致する別のファイルです。"]}).to_parquet(
        str(src / "odd1.parquet")
    )
    ingest([str(src)], str(tmp_path / "out"), str(tmp_path / "stg"), CFG, parallel=SERIAL)
    texts = {Path(d["source"]).name: d["text"] for d in _jsonl(tmp_path / "out/docs.jsonl")}
    assert texts == {
        "odd[1].parquet": "角括弧の名前のファイルです。",
        "odd1.parquet": "パターンに一致する別のファイルです。",
    }

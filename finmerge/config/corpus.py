"""Sections of the corpus stages: ingest (with the EDINET connector), clean, dedup and how shards are spread."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from finmerge.config.base import Section


class EdinetConfig(Section):
    """EDINET API v2 connector: lists filings by file date and downloads new ones before ingest."""

    enabled: bool = Field(False, description="Fetch new filings from EDINET before ingesting.")
    base_url: str = "https://api.edinet-fsa.go.jp/api/v2"
    start: str | None = Field(None, description="First file date to list (YYYY-MM-DD).")
    end: str | None = Field(None, description="Last file date to list (YYYY-MM-DD). Default: today.")
    doc_types: list[str] = Field(
        default_factory=lambda: ["120"], description="docTypeCode values to fetch (120 = 有価証券報告書)."
    )
    package: Literal["xbrl", "csv"] = Field(
        "xbrl", description="Which package to download: xbrl (type=1 ZIP) or csv (type=5 ZIP, UTF-16 TSV)."
    )
    download_uri: str | None = Field(
        None, description="Where raw packages are kept (fsspec URI). Default: <storage.uri>/edinet."
    )
    max_concurrency: int = Field(8, ge=1, le=32, description="Parallel downloads (EDINET plateaus at ~8).")
    retries: int = Field(5, ge=0)
    backoff_s: float = Field(1.0, ge=0, description="First retry delay; doubles each try, with jitter.")
    timeout_s: float = Field(60.0, gt=0)
    relist_days: int = Field(
        7, ge=0, description="Re-list this many days before the last listed date (withdrawals, edits)."
    )
    api_key_env: str = Field("EDINET_API_KEY", description="Environment variable holding the API key.")
    api_key_block: str | None = Field(
        None, description="Prefect Secret block holding the API key (used when the variable is unset)."
    )

    @field_validator("start", "end")
    @classmethod
    def _iso_date(cls, v: str | None) -> str | None:
        from datetime import date  # local: only this section needs it

        if v is not None:
            date.fromisoformat(str(v))  # ValueError names the bad value
        return v

    @field_validator("doc_types", mode="before")
    @classmethod
    def _doc_type_codes(cls, v: Any) -> Any:
        # YAML reads 120 as an int and 030 as 30: codes are three-digit strings.
        if isinstance(v, list):
            return [f"{x:03d}" if isinstance(x, int) else x for x in v]
        return v

    @model_validator(mode="after")
    def _ordered(self) -> EdinetConfig:
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class IngestConfig(Section):
    sources: list[str] = Field(
        default_factory=list,
        description="fsspec URIs or globs of raw documents (.jsonl, .txt, .html, EDINET .zip) and Hugging Face "
        "datasets (save_to_disk folders, .parquet, .arrow). With the demo on, these are read in addition to "
        "the demo filings.",
    )
    text_field: str = Field(
        "text", description="The text field of JSONL records and the text column of Hugging Face datasets."
    )
    metadata_columns: dict[str, str] = Field(
        default_factory=dict,
        description="Source column (JSONL field or dataset column) -> document field (doc_id, edinet_code, "
        "company, filing_date, section) or meta key, e.g. {name: company, date: filing_date}. Columns not "
        "named here keep their own name: schema fields by that name fill the schema, the rest go under meta.",
    )
    dataset_split: str = Field("train", description="The split read from a DatasetDict save_to_disk folder.")
    max_file_mb: int = Field(256, ge=1, description="Larger files (other than JSONL) are quarantined unread.")
    max_line_mb: int = Field(16, ge=1, description="Longer JSONL lines are quarantined; the rest is kept.")
    edinet: EdinetConfig = EdinetConfig()


class WorkersConfig(Section):
    """Where work runs: in this process, on a local process pool or on a Dask cluster."""

    backend: Literal["serial", "process", "dask"] = Field(
        "process",
        description="serial; process = a local process pool; dask = a Dask cluster (prefect-dask's, or "
        "dask_address, else a local one).",
    )
    workers: int = Field(0, ge=0, description="Processes / Dask workers. 0 = all cores.")
    dask_address: str | None = Field(None, description="Dask scheduler, e.g. tcp://scheduler:8786.")


class ParallelConfig(WorkersConfig):
    """How the corpus stages spread shards over cores or a cluster."""

    shard_docs: int = Field(500, ge=1, description="Documents per shard sent to a worker.")


class CleanConfig(Section):
    """Quality filters and text modification for Japanese filings (see ``finmerge/corpus/textclean.py``).

    Defaults start from Swallow corpus v1 (Okazaki et al. 2024) and llm-jp / HojiChar, adapted to filing
    sections: shorter units than web pages, kanji- and number-heavy, long legal sentences, formulaic phrasing.
    Ratios are over non-whitespace characters of the cleaned text.
    """

    min_chars: int = Field(
        80,
        ge=0,
        description="Minimum characters after cleaning. Swallow: 400; a filing section is a shorter unit.",
    )
    max_chars: int = Field(100_000, ge=1, description="Maximum characters after cleaning.")
    max_ng_word_ratio: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Maximum share of characters inside NG words (Swallow: < 0.05). A share, not a hit count, "
        "so one accidental match (アスパラガス contains アス) never drops a filing.",
    )
    ng_words: list[str] = Field(
        default_factory=lambda: ["アダルト", "出会い系", "カジノ無料", "今すぐクリック"],
        description="NG words, matched with an Aho-Corasick automaton after NFKC.",
    )
    ng_words_uri: str | None = Field(
        None, description="Extra NG-word list: a text file at any fsspec URI, one word per line, # comments."
    )
    min_japanese_ratio: float = Field(
        0.5, ge=0, le=1, description="Minimum share of kana and kanji (Swallow: 0.5)."
    )
    min_hiragana_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Minimum hiragana share. Swallow: 0.2; filing prose is kanji- and number-heavy "
        "(当連結会計年度の売上高は…).",
    )
    max_katakana_ratio: float = Field(0.5, ge=0, le=1, description="Maximum katakana share (Swallow: 0.5).")
    max_symbol_ratio: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Maximum share of symbols (Unicode S*/P*), not counting the punctuation of ordinary prose "
        "and figures (、。「」()%…).",
    )
    max_digit_ratio: float = Field(
        0.35,
        ge=0,
        le=1,
        description="Maximum digit share. Web recipes drop number-heavy pages; filings are number-heavy by nature, "
        "so this only catches figure dumps that the table policy missed.",
    )
    min_mean_sentence_chars: float = Field(
        10,
        ge=0,
        description="Minimum mean sentence length (non-space characters per sentence ending in 。!?). Swallow: "
        "20; filings have short numbered headings such as (1) 経営方針.",
    )
    max_mean_sentence_chars: float = Field(
        250,
        ge=1,
        description="Maximum mean sentence length. Swallow: 90, HojiChar: 100, llm-jp: 250; legal sentences in "
        "filings are long, so llm-jp's bound: it still drops text without 。 (lists, navigation, tables).",
    )
    max_dup_line_ratio: float = Field(
        0.3, ge=0, le=1, description="Maximum share of lines that repeat an earlier line (Swallow: 0.30)."
    )
    max_top_ngram_share: dict[int, float] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
        description="Per n: maximum share of characters covered by the most frequent character n-gram "
        "(Swallow / Gopher: 0.20 / 0.18 / 0.16).",
    )
    max_dup_ngram_share: dict[int, float] = Field(
        default_factory=lambda: {5: 0.8, 6: 0.77, 7: 0.74, 8: 0.71, 9: 0.68, 10: 0.65},
        description="Per n: maximum share of characters covered by character n-grams that occur more than once. "
        "Swallow: 0.15 … 0.10 for n = 5 … 10, which drops almost every filing section (company names, "
        "当社グループ, 影響を及ぼす可能性があります recur by design); here it only catches text repeated wholesale.",
    )
    drop_sections: list[str] = Field(
        default_factory=lambda: ["表紙", "証券情報", "主要な経営指標等の推移"],
        description="Sections dropped whole: cover page, securities information, the financial-highlights table.",
    )
    mask_pii: bool = Field(
        True, description="Mask e-mail addresses (`<EMAIL>`) and phone numbers (`<PHONE>`)."
    )
    mask_names: bool = Field(
        False,
        description="Mask personal names that follow an officer's title and a space (`代表取締役社長 山田 太郎` → "
        "`代表取締役社長 <NAME>`); names in running text without a title are not caught.",
    )


class DedupConfig(Section):
    """Exact + MinHash-LSH near-duplicate removal (see ``finmerge/corpus/dedup.py``, ``finmerge/corpus/minhash.py``).

    Two texts of character-n-gram Jaccard J share a band with probability P(J) = 1 - (1 - J^rows)^bands; the
    curve's midpoint is about (1/bands)^(1/rows). Defaults 24 × 10: P(0.85) = 0.995, P(0.8) = 0.93,
    P(0.7) = 0.50, P(0.5) = 0.02, midpoint 0.73; candidates are then confirmed at ``threshold``.
    """

    ngram: int = Field(
        5, ge=1, description="Character n-gram length of the shingles (Swallow, HojiChar, Doubri: 5)."
    )
    bands: int = Field(
        24,
        ge=1,
        description="LSH bands b. More bands catch lower Jaccard: P(J) = 1 - (1 - J^r)^b. The index holds "
        "b band keys (12 bytes each) per kept document.",
    )
    rows: int = Field(
        10,
        ge=1,
        description="Signature values per band r (b × r values per document, one-permutation hashing, so "
        "the cost barely grows with them). More rows make the curve steeper; midpoint ≈ (1/b)^(1/r).",
    )
    threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="A candidate pair is a duplicate when the exact Jaccard of its n-gram sets is at least this "
        "(only with verify). Below the 0.85 target so pairs just above it are never lost to the check.",
    )
    verify: bool = Field(
        True,
        description="Confirm LSH candidates by exact Jaccard on the n-gram sets (texts are read back by byte "
        "offset). Off: every candidate pair is a duplicate, as in Swallow / datatrove (faster, false positives "
        "around the curve midpoint).",
    )
    keep: Literal["earliest", "longest"] = Field(
        "earliest",
        description="Which member of a duplicate cluster survives: earliest = earliest filing_date (undated "
        "last), then input order (earlier batches first); longest = most characters, then input order. A new "
        "document that wins over one kept by an earlier batch retracts it.",
    )
    seed: int = Field(
        42,
        description="Seed of the n-gram hash (changing it, or ngram/bands/rows, re-signs the lineage's index).",
    )


class CorpusConfig(Section):
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    dedup: DedupConfig = DedupConfig()
    parallel: ParallelConfig = ParallelConfig()

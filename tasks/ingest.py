"""Ingest: raw documents (files, S3 prefixes, globs, EDINET) → section-level JSONL records."""

from finmerge.corpus.ingest import ingest
from finmerge.runner.stage import Stage, StageCall


def source_listing(cfg, sources_digest: str) -> list:
    """What identifies an ingest's input ("listing"): the sources' listing and, with EDINET, today's date
    and the download folder's listing (EDINET publishes every day, so a new day is a new ingest)."""
    import datetime as dt

    from finmerge.core import storage
    from finmerge.runner.stage import sources_fingerprint

    e = cfg.corpus.ingest.edinet
    download = e.download_uri or storage.join(cfg.storage.uri, "edinet")
    return [
        sources_digest,
        (dt.date.today().isoformat(), sources_fingerprint([download])) if e.enabled else None,
    ]


def _work(c: StageCall) -> dict:
    from finmerge.core import storage

    sources, prev = c.args("sources", "prev")
    download = c.section.edinet.download_uri or storage.join(c.cfg.storage.uri, "edinet")
    return ingest(list(sources), c.out_uri, c.staging_dir, c.section, prev_uri=prev, edinet_download_uri=download,
                  **c.kw("parallel", "overwrite"))  # fmt: skip


# The caller fingerprints the sources (and the EDINET listing) into "listing"; "prev" is the batch before.
INGEST = Stage("ingest", "corpus.ingest", {"sources": "uri", "prev": "uri", "listing": "value"},
               key_exclude=("sources", "edinet"), code=("finmerge.corpus",), work=_work)  # fmt: skip

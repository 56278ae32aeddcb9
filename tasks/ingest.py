"""Ingest: raw documents (files, S3 prefixes, globs, EDINET) → section-level JSONL records."""

from finmerge.corpus.ingest import ingest
from finmerge.runner.stage import Stage, StageCall

CODE = ("finmerge.corpus",)


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

    s, e = c.section, c.section.edinet
    return ingest(
        list(c.inputs["sources"]),
        c.out_uri,
        c.staging_dir,
        cfg=s,
        prev_uri=c.inputs.get("prev"),
        edinet_download_uri=e.download_uri or storage.join(c.cfg.storage.uri, "edinet"),
        parallel=c.cfg.corpus.parallel,
        overwrite=c.overwrite,
    )


INGEST = Stage(
    name="ingest",
    section="corpus.ingest",
    # the caller fingerprints the sources (and the EDINET listing) into "listing"; "prev" is the batch before
    inputs={"sources": "uri", "prev": "uri", "listing": "value"},
    key_exclude=("sources", "edinet"),
    code=CODE,
    work=_work,
)

"""EDINET API v2 connector: list filings by file date and download the new packages into the raw store.

EDINET reports errors, and reportedly throttling, as HTTP 200 with a JSON body, so a response is judged by its JSON
status, its Content-Type and the ZIP magic bytes, never by the HTTP status alone. Throttling, server errors,
timeouts and dropped connections are retried with exponential backoff and jitter; a rejected key fails the run at
once; a document EDINET will not serve (404) is recorded as an error and the run goes on.

Packages are written to ``{download_uri}/{docID}.zip`` atomically; a valid package already there is reused, so a
crash between download and manifest commit costs nothing on the next run.

The API key travels only in request query strings. Messages never hold it: the key is registered with
``finmerge.core.redact``, URLs are masked before they reach a message, httpx exceptions are re-raised with masked
text, and httpx's own request log line is masked by a filter on its logger.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TypeVar

import httpx

from finmerge.config import EdinetConfig
from finmerge.core import redact, storage
from finmerge.core.retry import Backoff, retry_call
from finmerge.core.secrets import SecretError, resolve_secret

log = logging.getLogger("finmerge.edinet")
T = TypeVar("T")

PACKAGE_TYPES = {"xbrl": 1, "csv": 5}  # the ?type= of the document API
PACKAGE_FLAGS = {"xbrl": "xbrlFlag", "csv": "csvFlag"}
KEEP_FIELDS = (
    "edinetCode",
    "secCode",
    "filerName",
    "docTypeCode",
    "submitDateTime",
    "periodEnd",
    "docDescription",
    "parentDocID",
)
STATUSES = ("fetched", "reused", "withdrawn", "error")
AUTH_STATUSES = {401, 403}
RETRY_STATUSES = {408, 429}  # and every 5xx
RETENTION_DAYS = 3650  # EDINET purges documents older than ten years
MAX_RETRY_AFTER_S = 60.0
MAX_DOWNLOAD_BYTES = 512 << 20  # as filings.ZipLimits.max_package_bytes: anything bigger is refused anyway
SAFE_DOC_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")  # docIDs become file names and URL paths
KEY_PARAM = re.compile(r"(Subscription-Key=)[^&\s\"'#<>]*", re.I)
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class EdinetError(RuntimeError):
    """The run cannot go on (bad config, list API failing after retries). Never holds the API key."""


class EdinetAuthError(EdinetError):
    """EDINET rejected the API key."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Rejected(Exception):
    """EDINET answered, and retrying will not change the answer (400/404-style), or retries ran out."""


@dataclass
class FetchResult:
    records: list[dict]
    listed_through: str | None
    counts: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Keeping the key out of messages


def masked(text: object) -> str:
    """``text`` with every ``Subscription-Key=`` value replaced by ***, then masked by ``redact.mask``.

    The query parameter is masked whatever its value: a key never registered (one a test or a proxy put in the
    URL) must not reach a message either. The key itself is registered by :class:`_Api`.
    """
    return redact.mask(KEY_PARAM.sub(rf"\1{redact.MASK}", str(text)))


class _RedactKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "subscription-key" in message.lower():
            record.msg, record.args = masked(message), None
        return True


_REDACT_FILTER = _RedactKeys()


def _guard_http_logs() -> None:
    # httpx logs every request URL at INFO ("HTTP Request: GET …?Subscription-Key=…").
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if _REDACT_FILTER not in logger.filters:
            logger.addFilter(_REDACT_FILTER)


_guard_http_logs()


# ----------------------------------------------------------------------------------------------------------------
# API key


def resolve_api_key(cfg: EdinetConfig) -> str | None:
    """The key from ``$cfg.api_key_env``, else the Prefect Secret block ``cfg.api_key_block``, else None."""
    try:
        return resolve_secret(cfg.api_key_env, cfg.api_key_block)
    except SecretError as exc:
        raise EdinetError(str(exc)) from None


# ----------------------------------------------------------------------------------------------------------------
# HTTP


def _status_of(body: object) -> tuple[int | None, str]:
    """(status, message) of an EDINET JSON body: list API ``metadata.status``, document API ``StatusCode``."""
    if not isinstance(body, dict):
        return None, ""
    meta = body.get("metadata")
    holder = meta if isinstance(meta, dict) and "status" in meta else body
    for key in ("status", "StatusCode", "statusCode"):
        if key in holder:
            try:
                return int(str(holder[key]).strip()), str(holder.get("message", ""))
            except ValueError:
                return None, str(holder.get("message", ""))
    return None, ""


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        seconds = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(seconds, MAX_RETRY_AFTER_S) if 0 <= seconds < float("inf") else None  # not NaN, not negative


def is_valid_zip(data: bytes) -> bool:
    """A ZIP whose central directory reads (so not truncated); members are not inflated here."""
    if not data.startswith(ZIP_MAGIC):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return bool(zf.infolist())
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error, NotImplementedError):
        return False


class _Api:
    """The two EDINET endpoints, with retries; the key is added to each request and to nothing else."""

    def __init__(self, cfg: EdinetConfig, api_key: str):
        self.cfg = cfg
        self._key = api_key
        redact.register(api_key)  # messages and log records mask it from now on
        self.base = cfg.base_url.rstrip("/")
        # Doubling from backoff_s, plus up to half of it at random so parallel downloads do not retry in step;
        # only cfg.retries bounds the retries, as before (no cap, no time budget).
        self._backoff = Backoff(
            attempts=cfg.retries + 1,
            first_delay_s=cfg.backoff_s,
            max_delay_s=math.inf,
            budget_s=math.inf,
            jitter=0.5,
        )
        pool = cfg.max_concurrency + 1
        self.http = httpx.Client(
            timeout=cfg.timeout_s,
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            headers={"User-Agent": "finmerge-edinet"},
        )

    def close(self) -> None:
        self.http.close()

    def _raise_for(self, status: int, message: str, what: str, retry_after: float | None = None):
        message = masked(" ".join(message.split())[:200])
        if status in AUTH_STATUSES:
            where = f"${self.cfg.api_key_env}" + (
                f" or Prefect Secret block {self.cfg.api_key_block!r}" if self.cfg.api_key_block else ""
            )
            raise EdinetAuthError(
                f"{what}: EDINET rejected the API key (status {status}: {message}); check {where}"
            )
        if status in RETRY_STATUSES or status >= 500:
            raise _Retryable(f"{what}: status {status}: {message}", retry_after)
        raise _Rejected(f"{what}: status {status}: {message}")

    def _get(self, path: str, params: dict, what: str) -> tuple[httpx.Headers, bytes]:
        """Headers and body of a 200; other HTTP statuses are classified (auth / retryable / rejected)."""
        try:
            with self.http.stream(
                "GET", f"{self.base}/{path}", params={**params, "Subscription-Key": self._key}
            ) as resp:
                if resp.status_code != 200:
                    body = resp.read()[:2000].decode("utf-8", "replace")
                    _, message = _status_of(_json_or_none(body))
                    self._raise_for(resp.status_code, message or body, what, _retry_after(resp.headers))
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise _Rejected(f"{what}: response larger than {MAX_DOWNLOAD_BYTES >> 20} MiB")
                    chunks.append(chunk)
                return resp.headers, b"".join(chunks)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"{what}: timed out ({type(exc).__name__})") from None
        except httpx.InvalidURL as exc:
            raise EdinetError(f"invalid EDINET URL: {masked(exc)}") from None
        except httpx.HTTPError as exc:
            # Connection refused / reset, protocol errors: their text may hold the URL, hence the key.
            raise _Retryable(f"{what}: {type(exc).__name__}: {masked(exc)}") from None

    def _retrying(self, attempt: Callable[[], T]) -> T:
        return retry_call(
            attempt,
            self._backoff,
            what="EDINET",
            transient=(_Retryable,),
            # A Retry-After of 0 (or none) leaves the doubling pause in place.
            retry_after=lambda exc: exc.retry_after or None,
            give_up=lambda exc, failures, _: _Rejected(f"{exc} (gave up after {failures} attempts)"),
        )

    def list_documents(self, day: date) -> list[dict]:
        what = f"documents.json?date={day.isoformat()}&type=2"

        def once() -> list[dict]:
            headers, data = self._get("documents.json", {"date": day.isoformat(), "type": 2}, what)
            body = _json_or_none(data)
            if body is None:
                raise _Retryable(f"{what}: not JSON (Content-Type {headers.get('content-type', 'none')})")
            status, message = _status_of(body)
            if status is not None and status != 200:
                self._raise_for(status, message, what)
            results = body.get("results") if isinstance(body, dict) else None
            if not isinstance(results, list):
                raise _Rejected(f"{what}: no results[] in the answer")
            return [entry for r in results if (entry := clean_entry(r)) is not None]

        try:
            return self._retrying(once)
        except _Rejected as exc:
            raise EdinetError(str(exc)) from None

    def document(self, doc_id: str, package_type: int) -> bytes:
        """The package; raises _Rejected when EDINET will not serve it (after retries when it was transient)."""
        what = f"document {doc_id} (type={package_type})"

        def once() -> bytes:
            headers, data = self._get(f"documents/{doc_id}", {"type": package_type}, what)
            if data.startswith(ZIP_MAGIC):
                if not is_valid_zip(data):
                    raise _Retryable(f"{what}: truncated or corrupt ZIP ({len(data)} bytes)")
                return data
            ctype = headers.get("content-type", "none")
            body = _json_or_none(data)
            if body is None and "json" in ctype:
                raise _Retryable(f"{what}: unreadable JSON body ({len(data)} bytes)")
            if body is not None:  # an error (or throttling) dressed as a 200
                status, message = _status_of(body)
                if status is None:
                    raise _Rejected(f"{what}: JSON without a status instead of a ZIP")
                self._raise_for(status, message, what)
                raise _Rejected(f"{what}: JSON status {status} instead of a ZIP")
            raise _Retryable(f"{what}: not a ZIP (Content-Type {ctype}, starts with {data[:8]!r})")

        return self._retrying(once)


def _json_or_none(data: bytes | str) -> object | None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # also 4300+-digit integers and nesting past the parser's depth
        return None


def _scalar(value: object) -> str | int | float | bool | None:
    """A list-API field as EDINET documents it (a flat scalar); containers become None. Lone surrogates from
    JSON escapes, which no UTF-8 manifest can hold, become U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value if isinstance(value, int | float | bool) else None


def clean_entry(entry: object) -> dict | None:
    """One results[] element of the list API as a flat dict of scalars, or None when it is not an object.

    The listing is input like any other: its values end up in manifests and document metadata, so nested
    values (which could also recurse when printed) and unencodable text are neutralised here.
    """
    if not isinstance(entry, dict):
        return None
    return {str(key): _scalar(value) for key, value in entry.items()}


# ----------------------------------------------------------------------------------------------------------------
# Fetching


def _iso(value: str, what: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise EdinetError(f"{what}: {value!r} is not a YYYY-MM-DD date") from exc


def list_window(cfg: EdinetConfig, listed_through: str | None, today: date) -> tuple[date, date]:
    """First and last file date to list: from max(start, listed_through − relist_days) to end (default today)."""
    starts = [_iso(cfg.start, "edinet.start")] if cfg.start else []
    if listed_through:
        starts.append(_iso(listed_through, "listed_through") - timedelta(days=cfg.relist_days))
    if not starts:
        raise EdinetError(
            "edinet.start is not set and nothing was listed before: set corpus.ingest.edinet.start"
        )
    first = max(starts)
    last = min(_iso(cfg.end, "edinet.end") if cfg.end else today, today)
    oldest = today - timedelta(days=RETENTION_DAYS)
    if first < oldest:
        log.warning("EDINET keeps ten years only: listing from %s instead of %s", oldest, first)
        first = oldest
    return first, last


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def _record(doc_id: str, entry: dict, status: str, reason: str | None = None) -> dict:
    return {
        "doc_id": doc_id,
        "uri": None,
        "sha256": None,
        "status": status,
        "reason": reason,
        "edinet": {k: _text(entry.get(k)) for k in KEEP_FIELDS},
    }


def _text(value: object) -> str | None:
    """A kept list-API field as text (EDINET sends strings; a number is taken as its digits)."""
    if value is None or isinstance(value, bool):
        return None
    return value if isinstance(value, str) else str(value)


def _plan(entries: dict[str, dict], cfg: EdinetConfig, known: set[str]) -> tuple[list[dict], list[int]]:
    """Records in listing order, and the indices of those still to download."""
    records, todo = [], []
    flag = PACKAGE_FLAGS[cfg.package]
    for doc_id, entry in entries.items():
        wanted = str(entry.get("docTypeCode")) in cfg.doc_types
        if str(entry.get("withdrawalStatus") or "0") != "0":
            if wanted or doc_id in known:  # a known filing withdrawn later must be reported, to be retracted
                records.append(
                    _record(doc_id, entry, "withdrawn", f"withdrawalStatus={entry['withdrawalStatus']}")
                )
        elif not wanted or doc_id in known:
            continue
        elif not SAFE_DOC_ID.match(doc_id):
            records.append(_record(doc_id, entry, "error", "docID is not alphanumeric"))
        elif str(entry.get(flag)) != "1":
            records.append(
                _record(doc_id, entry, "error", f"no {cfg.package} package ({flag}={entry.get(flag)})")
            )
        else:
            todo.append(len(records))
            records.append(_record(doc_id, entry, "pending"))
    return records, todo


def _download(api: _Api, cfg: EdinetConfig, download_uri: str, doc_id: str) -> dict:
    """status / uri / sha256 / reason for one document: reused when a valid package is already stored."""
    uri = storage.join(download_uri, f"{doc_id}.zip")
    if storage.exists(uri):
        data = storage.read_bytes(uri)
        if is_valid_zip(data):
            return {"status": "reused", "uri": uri, "sha256": storage.sha256_bytes(data)}
        log.warning("%s: the stored package is not a valid ZIP; fetching it again", doc_id)
    try:
        data = api.document(doc_id, PACKAGE_TYPES[cfg.package])
    except _Rejected as exc:
        log.warning("%s", exc)
        return {"status": "error", "reason": str(exc)}
    storage.write_bytes(uri, data)
    log.debug("%s: %d bytes → %s", doc_id, len(data), uri)
    return {"status": "fetched", "uri": uri, "sha256": storage.sha256_bytes(data)}


def fetch_new_filings(
    cfg: EdinetConfig,
    download_uri: str,
    known_doc_ids: set[str],
    *,
    api_key: str,
    listed_through: str | None = None,
    today: date | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> FetchResult:
    """List the file dates of the window, download the new filings of ``cfg.doc_types``, describe them all.

    ``on_progress(phase, done, total)`` is called with phase "list" after each date and "download" after each
    document. Withdrawn filings are reported (status "withdrawn") even when already known, so they can be retracted.
    Raises EdinetError (EdinetAuthError for a rejected key) when the run cannot go on.
    """
    if not api_key:
        raise EdinetError(f"no EDINET API key: set ${cfg.api_key_env} or edinet.api_key_block")
    progress = on_progress or (lambda phase, done, total: None)
    first, last = list_window(cfg, listed_through, today or date.today())
    if first > last:
        log.info("EDINET: nothing to list (%s is after %s)", first, last)
        return FetchResult([], listed_through, dict.fromkeys(STATUSES, 0))

    api = _Api(cfg, api_key)
    try:
        days = list(_days(first, last))
        log.info("EDINET: listing %d file date(s) %s … %s", len(days), first, last)
        # docID → its latest list record: later dates carry withdrawals and edits.
        entries: dict[str, dict] = {}
        for n, day in enumerate(days, 1):
            results = api.list_documents(day)
            for entry in results:
                if isinstance(entry.get("docID"), str) and entry["docID"]:
                    entries[entry["docID"]] = entry
            log.debug("%s: %d document(s) listed", day, len(results))
            progress("list", n, len(days))

        records, todo = _plan(entries, cfg, set(known_doc_ids))
        log.info(
            "EDINET: %d listed, %d to download (max %d at once)", len(entries), len(todo), cfg.max_concurrency
        )
        with ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="edinet") as pool:
            futures = {pool.submit(_download, api, cfg, download_uri, records[i]["doc_id"]): i for i in todo}
            try:
                for n, future in enumerate(as_completed(futures), 1):
                    records[futures[future]].update(future.result())
                    progress("download", n, len(futures))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # a rejected key stops the queued downloads
                raise
    finally:
        api.close()

    counts = dict.fromkeys(STATUSES, 0)
    for rec in records:
        counts[rec["status"]] += 1
    log.info("EDINET: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return FetchResult(records, last.isoformat(), counts)

"""A fake EDINET API v2 on loopback, serving fixture packages built by finmerge.demo.edinet.

Quirks are switchable per document, as EDINET has them: errors as HTTP 200 + JSON (a wrong key, a missing
document), throttling as 200 + JSON or HTTP 429 / 503, dropped connections, withdrawals listed on a later date.
It records every request path and the most requests it had in flight at once.
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from finmerge.demo.edinet import DemoFiling, build_csv_zip, build_xbrl_zip

PREFIX = "/api/v2"
JSON = "application/json; charset=utf-8"
BAD_KEY = "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."
DESCRIPTIONS = {
    "120": "有価証券報告書",
    "130": "訂正有価証券報告書",
    "180": "臨時報告書",
    "350": "大量保有報告書",
}


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A ZIP of ``members`` (name → bytes) as bytes, for packages the demo builders would never make."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def section_texts(company: str, seed: int) -> dict[str, str]:
    return {
        "表紙": f"【会社名】{company}",
        "主要な経営指標等の推移": f"売上高\t{1000 + seed}\t{1100 + seed}",
        "事業の内容": f"{company}は精密機械の製造と販売を行っています。\n主な製品は工作機械{seed}型です。",
        "事業等のリスク": f"為替の変動は{company}の業績に影響を与える可能性があります。\n区分\t内容\n為替\t円高",
        "経営者による財政状態、経営成績及びキャッシュ・フローの状況の分析": f"当期の売上高は前期比{seed}％増加しました。",
    }


@dataclass
class FakeDoc:
    doc_id: str
    filing: DemoFiling
    doc_type: str = "120"
    throttle: int = 0  # the first k requests of the document are throttled …
    # … as 200 + JSON 429 ("json"), HTTP "429" / "503", a dropped connection ("drop") or a stall ("slow", 1 s)
    throttle_mode: str = "json"
    missing: str | None = None  # "json": 200 + {"StatusCode": 404}; "http": HTTP 404
    withdrawn_on: str | None = None  # listed again that day with withdrawalStatus "1"
    xbrl_flag: str = "1"
    csv_flag: str = "1"

    def entry(self, seq: int, withdrawn: bool) -> dict:
        f = self.filing
        return {
            "seqNumber": seq,
            "docID": self.doc_id,
            "edinetCode": f.edinet_code,
            "secCode": f.sec_code,
            "JCN": None,
            "filerName": f.company,
            "fundCode": None,
            "ordinanceCode": "010",
            "formCode": "030000",
            "docTypeCode": self.doc_type,
            "periodStart": "2023-04-01",
            "periodEnd": "2024-03-31",
            "submitDateTime": f"{f.filing_date} 15:00",
            "docDescription": f"{DESCRIPTIONS.get(self.doc_type, '書類')}－第10期(2023/04/01－2024/03/31)",
            "issuerEdinetCode": None,
            "subjectEdinetCode": None,
            "subsidiaryEdinetCode": None,
            "currentReportReason": None,
            "parentDocID": None,
            "opeDateTime": None,
            "withdrawalStatus": "1" if withdrawn else "0",
            "docInfoEditStatus": "0",
            "disclosureStatus": "0",
            "xbrlFlag": self.xbrl_flag,
            "pdfFlag": "1",
            "attachDocFlag": "0",
            "englishDocFlag": "0",
            "csvFlag": self.csv_flag,
            "legalStatus": "1",
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; Nagle would stall each by ~40 ms

    def log_message(self, *args):  # the default writes every URL, key included, to stderr
        pass

    def do_GET(self):
        self.server.fake.handle(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients that timed out and left are expected
        pass


class FakeEdinet:
    def __init__(self, api_key: str, delay_s: float = 0.0):
        self.api_key = api_key
        self.delay_s = delay_s  # per document request, so that concurrent downloads overlap
        self.docs: dict[str, FakeDoc] = {}
        self.list_throttle = 0  # the first k list requests get 200 + JSON 503
        self.list_errors: dict[str, int] = {}  # date → a JSON metadata status for that day's list
        self.requests: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._hits: Counter[str] = Counter()
        self._packages: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.fake = self
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    # setup ------------------------------------------------------------------------------------------------------

    def add(self, doc_id: str, filing_date: str, doc_type: str = "120", **quirks) -> FakeDoc:
        n = len(self.docs) + 1
        company = f"株式会社テスト{n:02d}"
        filing = DemoFiling(
            doc_id=doc_id,
            edinet_code=f"E{10000 + n:05d}",
            company=company,
            filing_date=filing_date,
            sections=section_texts(company, n),
            doc_type_code=doc_type,
            sec_code=f"{1000 + n}0",
        )
        self.docs[doc_id] = FakeDoc(doc_id, filing, doc_type, **quirks)
        return self.docs[doc_id]

    def start(self) -> FakeEdinet:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{PREFIX}"

    # what was asked ---------------------------------------------------------------------------------------------

    def document_requests(self, doc_id: str | None = None) -> list[str]:
        paths = [
            urlsplit(r).path for r in self.requests if urlsplit(r).path.startswith(f"{PREFIX}/documents/")
        ]
        ids = [p.rsplit("/", 1)[1] for p in paths]
        return [i for i in ids if doc_id is None or i == doc_id]

    def listed_dates(self) -> list[str]:
        return [
            parse_qs(urlsplit(r).query)["date"][0]
            for r in self.requests
            if urlsplit(r).path == f"{PREFIX}/documents.json"
        ]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    # serving ----------------------------------------------------------------------------------------------------

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urlsplit(req.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append(req.path)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if url.path == f"{PREFIX}/documents.json":
                self._list(req, query)
            elif url.path.startswith(f"{PREFIX}/documents/"):
                time.sleep(self.delay_s)
                self._document(req, url.path.rsplit("/", 1)[1], query)
            else:
                self._send(req, 404, b"not found", "text/plain")
        finally:
            with self._lock:
                self.in_flight -= 1

    def _send(self, req, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(body)

    def _json(self, req, obj: dict, status: int = 200, headers: dict | None = None) -> None:
        self._send(req, status, json.dumps(obj, ensure_ascii=False).encode(), JSON, headers)

    def _list(self, req, query: dict) -> None:
        day = query.get("date", "")
        if query.get("Subscription-Key") != self.api_key:
            return self._json(
                req, {"metadata": {"title": "書類一覧API", "status": "401", "message": BAD_KEY}}
            )
        with self._lock:
            self._hits["list"] += 1
            throttled = self._hits["list"] <= self.list_throttle
        if throttled:
            return self._json(req, {"metadata": {"status": "503", "message": "Service Unavailable"}})
        if day in self.list_errors:
            return self._json(
                req, {"metadata": {"status": str(self.list_errors[day]), "message": "Bad Request"}}
            )
        date.fromisoformat(day)
        results = []
        for doc in self.docs.values():
            if doc.filing.filing_date == day and doc.withdrawn_on != day:
                results.append(doc.entry(len(results) + 1, withdrawn=False))
            if doc.withdrawn_on == day:
                results.append(doc.entry(len(results) + 1, withdrawn=True))
        meta = {
            "title": "提出された書類を把握するためのAPI",
            "parameter": {"date": day, "type": query.get("type", "1")},
            "resultset": {"count": len(results)},
            "processDateTime": f"{day} 23:59",
            "status": "200",
            "message": "OK",
        }
        self._json(req, {"metadata": meta, "results": results})

    def _document(self, req, doc_id: str, query: dict) -> None:
        if query.get("Subscription-Key") != self.api_key:
            return self._json(req, {"StatusCode": 401, "message": BAD_KEY})
        doc = self.docs.get(doc_id)
        with self._lock:
            self._hits[doc_id] += 1
            hit = self._hits[doc_id]
        if doc is None or doc.missing == "json":
            return self._json(req, {"StatusCode": 404, "message": "該当する書類が存在しません。"})
        if doc.missing == "http":
            return self._send(req, 404, b"<html>Not Found</html>", "text/html")
        if hit <= doc.throttle:
            if doc.throttle_mode == "json":
                return self._json(
                    req, {"StatusCode": 429, "message": "Rate limit is exceeded. Try again later."}
                )
            if doc.throttle_mode == "drop":
                req.close_connection = True
                return None
            if doc.throttle_mode == "slow":
                time.sleep(1.0)  # past the client's timeout; the late answer goes to a closed socket
                req.close_connection = True
                return None
            status = int(doc.throttle_mode)
            return self._send(req, status, b"<html>busy</html>", "text/html", {"Retry-After": "0"})
        kind = query.get("type", "1")
        key = (doc_id, kind)
        if key not in self._packages:
            build = {"1": build_xbrl_zip, "5": build_csv_zip}.get(kind)
            self._packages[key] = build(doc.filing) if build else b"%PDF-1.4 fake"
        mime = "application/pdf" if kind == "2" else "application/octet-stream"
        self._send(req, 200, self._packages[key], mime)

"""The EDINET connector against a fake EDINET v2 server on loopback (tests/edinet_fake.py)."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import pytest

from finmerge.config import EdinetConfig
from finmerge.core import redact, storage
from finmerge.corpus import edinet
from finmerge.corpus.filings import read_package
from tests.edinet_fake import FakeEdinet

KEY = "k3y-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
TODAY = date(2024, 6, 30)
DAYS = ["2024-06-17", "2024-06-18", "2024-06-19", "2024-06-20", "2024-06-21"]


@pytest.fixture()
def fake():
    server = FakeEdinet(KEY).start()
    yield server
    server.close()


def populate(fake: FakeEdinet) -> None:
    fake.add("S100A001", "2024-06-17")
    fake.add("S100A002", "2024-06-18")
    fake.add("S100A003", "2024-06-18", doc_type="130")
    fake.add("S100A004", "2024-06-19", doc_type="180")
    fake.add("S100A005", "2024-06-19", throttle=2, throttle_mode="json")
    fake.add("S100A006", "2024-06-20", throttle=2, throttle_mode="429")
    fake.add("S100A007", "2024-06-20", throttle=1, throttle_mode="503")
    fake.add("S100A008", "2024-06-20", throttle=1, throttle_mode="drop")
    fake.add("S100A009", "2024-06-21", withdrawn_on="2024-06-21")
    fake.add("S100A010", "2024-06-21", missing="json")
    fake.add("S100A011", "2024-06-21", doc_type="350")


FETCHED = {"S100A001", "S100A002", "S100A003", "S100A005", "S100A006", "S100A007", "S100A008"}


def config(fake: FakeEdinet, **kw) -> EdinetConfig:
    base = dict(
        enabled=True,
        base_url=fake.base_url,
        start=DAYS[0],
        end=DAYS[-1],
        doc_types=["120", "130"],
        max_concurrency=3,
        retries=3,
        backoff_s=0.01,
        timeout_s=5,
    )
    return EdinetConfig(**(base | kw))


def by_status(result: edinet.FetchResult) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rec in result.records:
        out.setdefault(rec["status"], set()).add(rec["doc_id"])
    return out


def test_full_fetch_downloads_exactly_the_wanted_doc_types(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    populate(fake)
    seen = []
    result = edinet.fetch_new_filings(
        config(fake),
        str(tmp_path / "raw"),
        set(),
        api_key=KEY,
        today=TODAY,
        on_progress=lambda *a: seen.append(a),
    )
    assert by_status(result) == {"fetched": FETCHED, "withdrawn": {"S100A009"}, "error": {"S100A010"}}
    assert result.counts == {"fetched": 7, "reused": 0, "withdrawn": 1, "error": 1}
    assert result.listed_through == "2024-06-21"
    assert fake.listed_dates() == DAYS
    # 180, 350 and the withdrawn 120 are never requested.
    assert set(fake.document_requests()) == FETCHED | {"S100A010"}
    for rec in result.records:
        if rec["status"] == "fetched":
            assert rec["uri"] == str(tmp_path / "raw" / f"{rec['doc_id']}.zip")
            data = Path(rec["uri"]).read_bytes()
            assert storage.sha256_bytes(data) == rec["sha256"]
            filing = read_package(data, rec["uri"])
            assert filing.doc_id == rec["doc_id"]
            assert filing.edinet_code == rec["edinet"]["edinetCode"]
            assert rec["edinet"]["docTypeCode"] in ("120", "130")
            assert set(rec["edinet"]) == set(edinet.KEEP_FIELDS)
    assert seen[-1] == ("download", 8, 8) and ("list", 5, 5) in seen
    assert KEY not in caplog.text  # httpx logs request URLs at INFO; the filter redacts them
    assert "Subscription-Key=***" in caplog.text


def test_default_doc_types_fetch_only_annual_reports(fake, tmp_path):
    populate(fake)
    result = edinet.fetch_new_filings(
        config(fake, doc_types=["120"]), str(tmp_path), set(), api_key=KEY, today=TODAY
    )
    assert by_status(result)["fetched"] == FETCHED - {"S100A003"}
    assert "S100A003" not in fake.document_requests()


def test_concurrency_is_bounded_and_used(tmp_path):
    fake = FakeEdinet(KEY, delay_s=0.15).start()
    try:
        for i in range(8):
            fake.add(f"S100C{i:03d}", "2024-06-17")
        cfg = config(fake, end="2024-06-17", max_concurrency=3)
        result = edinet.fetch_new_filings(cfg, str(tmp_path), set(), api_key=KEY, today=TODAY)
    finally:
        fake.close()
    assert result.counts["fetched"] == 8
    assert 1 < fake.max_in_flight <= 3


def test_throttled_documents_succeed_after_retries(fake, tmp_path):
    populate(fake)
    fake.list_throttle = 1
    result = edinet.fetch_new_filings(config(fake), str(tmp_path), set(), api_key=KEY, today=TODAY)
    assert {"S100A005", "S100A006", "S100A007", "S100A008"} <= by_status(result)["fetched"]
    assert len(fake.document_requests("S100A005")) == 3  # 2 × JSON 429 in a 200, then the ZIP
    assert len(fake.document_requests("S100A006")) == 3  # 2 × HTTP 429
    assert len(fake.document_requests("S100A007")) == 2  # HTTP 503
    assert len(fake.document_requests("S100A008")) == 2  # connection dropped
    assert fake.listed_dates()[:2] == [DAYS[0], DAYS[0]]  # the list call was retried too


def test_timeouts_are_retried(fake, tmp_path):
    fake.add("S100T002", "2024-06-17", throttle=1, throttle_mode="slow")
    cfg = config(fake, end="2024-06-17", timeout_s=0.3)
    result = edinet.fetch_new_filings(cfg, str(tmp_path), set(), api_key=KEY, today=TODAY)
    assert result.counts["fetched"] == 1
    assert len(fake.document_requests("S100T002")) == 2


def test_retries_run_out_into_an_error_record(fake, tmp_path):
    fake.add("S100T001", "2024-06-17", throttle=10, throttle_mode="json")
    result = edinet.fetch_new_filings(
        config(fake, end="2024-06-17", retries=2), str(tmp_path), set(), api_key=KEY, today=TODAY
    )
    (rec,) = result.records
    assert rec["status"] == "error" and "429" in rec["reason"] and "gave up after 3 attempts" in rec["reason"]
    assert len(fake.document_requests("S100T001")) == 3
    assert not (tmp_path / "S100T001.zip").exists()


def test_known_doc_ids_are_not_fetched_again(fake, tmp_path):
    populate(fake)
    cfg = config(fake)
    first = edinet.fetch_new_filings(cfg, str(tmp_path), set(), api_key=KEY, today=TODAY)
    known = {r["doc_id"] for r in first.records if r["status"] == "fetched"}
    fake.reset_log()
    second = edinet.fetch_new_filings(cfg, str(tmp_path), known, api_key=KEY, today=TODAY)
    assert fake.document_requests() == ["S100A010"]  # only the one that failed
    assert by_status(second) == {"withdrawn": {"S100A009"}, "error": {"S100A010"}}


def test_stored_packages_are_reused_and_corrupt_ones_refetched(fake, tmp_path):
    populate(fake)
    cfg = config(fake)
    edinet.fetch_new_filings(cfg, str(tmp_path), set(), api_key=KEY, today=TODAY)
    stored = tmp_path / "S100A001.zip"
    stored.write_bytes(stored.read_bytes()[:100])  # a torn write from an earlier crash
    fake.reset_log()
    second = edinet.fetch_new_filings(cfg, str(tmp_path), set(), api_key=KEY, today=TODAY)
    assert by_status(second)["reused"] == FETCHED - {"S100A001"}
    assert by_status(second)["fetched"] == {"S100A001"}
    assert sorted(fake.document_requests()) == ["S100A001", "S100A010"]
    read_package(stored.read_bytes(), str(stored))


def test_withdrawal_listed_later_is_reported_even_for_known_filings(fake, tmp_path):
    fake.add("S100W001", "2024-06-17", withdrawn_on="2024-06-19")
    cfg = config(fake)
    result = edinet.fetch_new_filings(cfg, str(tmp_path), {"S100W001"}, api_key=KEY, today=TODAY)
    (rec,) = result.records
    assert rec["status"] == "withdrawn" and rec["uri"] is None
    assert fake.document_requests() == []


def test_http_404_and_missing_package_flag_are_error_records(fake, tmp_path):
    fake.add("S100E001", "2024-06-17", missing="http")
    fake.add("S100E002", "2024-06-17", xbrl_flag="0")
    result = edinet.fetch_new_filings(
        config(fake, end="2024-06-17"), str(tmp_path), set(), api_key=KEY, today=TODAY
    )
    reasons = {r["doc_id"]: r["reason"] for r in result.records}
    assert all(r["status"] == "error" for r in result.records)
    assert "status 404" in reasons["S100E001"] and "gave up" not in reasons["S100E001"]
    assert "xbrlFlag=0" in reasons["S100E002"]
    assert fake.document_requests() == ["S100E001"]  # a 404 is not retried


def test_json_404_is_recorded_without_retry(fake, tmp_path):
    populate(fake)
    result = edinet.fetch_new_filings(config(fake), str(tmp_path), set(), api_key=KEY, today=TODAY)
    (rec,) = [r for r in result.records if r["doc_id"] == "S100A010"]
    assert rec["status"] == "error" and "status 404" in rec["reason"]
    assert rec["uri"] is None and rec["sha256"] is None
    assert len(fake.document_requests("S100A010")) == 1


def test_bad_key_fails_the_run_without_revealing_it(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    populate(fake)
    wrong = "wr0ng-2b7c1d0e9f8a7b6c5d4e3f2a1b0c9d8e"
    with pytest.raises(edinet.EdinetAuthError) as err:
        edinet.fetch_new_filings(config(fake), str(tmp_path), set(), api_key=wrong, today=TODAY)
    message = str(err.value)
    assert "rejected the API key" in message and "401" in message and "EDINET_API_KEY" in message
    assert wrong not in message and wrong not in caplog.text
    assert wrong not in repr(err.value.__cause__) and wrong not in repr(err.value.__context__)
    assert fake.document_requests() == []
    assert wrong in fake.requests[0]  # the key did go to the server, and only there


def test_bad_key_on_a_document_stops_the_run(fake, tmp_path, monkeypatch):
    populate(fake)
    monkeypatch.setattr(fake, "api_key", KEY)
    original = fake._document

    def reject(req, doc_id, query):  # the key is revoked after the list calls
        query["Subscription-Key"] = "revoked"
        original(req, doc_id, query)

    monkeypatch.setattr(fake, "_document", reject)
    with pytest.raises(edinet.EdinetAuthError) as err:
        edinet.fetch_new_filings(config(fake), str(tmp_path), set(), api_key=KEY, today=TODAY)
    assert KEY not in str(err.value)


def test_connection_errors_are_redacted(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = EdinetConfig(
        base_url="http://127.0.0.1:9/api/v2", start="2024-06-17", end="2024-06-17", retries=1, backoff_s=0.01
    )
    with pytest.raises(edinet.EdinetError) as err:
        edinet.fetch_new_filings(cfg, str(tmp_path), set(), api_key=KEY, today=TODAY)
    assert "ConnectError" in str(err.value) and "gave up after 2 attempts" in str(err.value)
    assert KEY not in str(err.value) and KEY not in caplog.text


def test_list_error_status_fails_the_run_clearly(fake, tmp_path):
    fake.list_errors["2024-06-18"] = 400
    with pytest.raises(edinet.EdinetError, match=r"date=2024-06-18.*status 400"):
        edinet.fetch_new_filings(config(fake), str(tmp_path), set(), api_key=KEY, today=TODAY)


def test_list_window_relists_recent_days(fake, tmp_path):
    populate(fake)
    cfg = config(fake, relist_days=1, end=None)
    edinet.fetch_new_filings(
        cfg, str(tmp_path), set(), api_key=KEY, listed_through="2024-06-20", today=date(2024, 6, 21)
    )
    assert fake.listed_dates() == ["2024-06-19", "2024-06-20", "2024-06-21"]
    first, last = edinet.list_window(config(fake, end=None), None, date(2024, 6, 18))
    assert (first, last) == (date(2024, 6, 17), date(2024, 6, 18))  # end defaults to today
    with pytest.raises(edinet.EdinetError, match="start is not set"):
        edinet.list_window(config(fake, start=None), None, TODAY)


def test_api_key_resolution(monkeypatch):
    cfg = EdinetConfig(api_key_env="FM_TEST_EDINET_KEY")
    monkeypatch.delenv("FM_TEST_EDINET_KEY", raising=False)
    assert edinet.resolve_api_key(cfg) is None
    monkeypatch.setenv("FM_TEST_EDINET_KEY", f" {KEY}\n")
    assert edinet.resolve_api_key(cfg) == KEY

    from prefect.blocks import system

    class FakeSecret:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    loaded = []
    monkeypatch.setattr(
        system.Secret, "load", classmethod(lambda cls, name: loaded.append(name) or FakeSecret(KEY))
    )
    with_block = EdinetConfig(api_key_env="FM_TEST_EDINET_KEY", api_key_block="edinet-key")
    assert edinet.resolve_api_key(with_block) == KEY and loaded == []  # the variable wins
    monkeypatch.delenv("FM_TEST_EDINET_KEY")
    assert edinet.resolve_api_key(with_block) == KEY and loaded == ["edinet-key"]


def test_key_is_masked_in_query_strings_and_registered_for_messages():
    unregistered = "other-" + KEY[::-1]  # e.g. a key a proxy put in the URL: the query value is masked anyway
    url = f"https://api.edinet-fsa.go.jp/api/v2/documents.json?date=2024-06-20&type=2&Subscription-Key={unregistered}"
    assert edinet.masked(url) == url.replace(unregistered, "***")
    edinet._Api(EdinetConfig(), KEY).close()
    assert KEY not in edinet.masked(f"boom {KEY} boom") and KEY not in redact.mask(f"boom {KEY} boom")


def test_packages_go_to_s3(fake, s3_bucket):
    fake.add("S100S001", "2024-06-17")
    fake.add("S100S002", "2024-06-17", throttle=1)
    uri = f"s3://{s3_bucket}/raw/edinet"
    cfg = config(fake, end="2024-06-17")
    result = edinet.fetch_new_filings(cfg, uri, set(), api_key=KEY, today=TODAY)
    assert result.counts["fetched"] == 2
    for rec in result.records:
        assert rec["uri"] == f"{uri}/{rec['doc_id']}.zip"
        assert read_package(storage.read_bytes(rec["uri"]), rec["uri"]).doc_id == rec["doc_id"]
    fake.reset_log()
    again = edinet.fetch_new_filings(cfg, uri, set(), api_key=KEY, today=TODAY)
    assert again.counts["reused"] == 2 and fake.document_requests() == []

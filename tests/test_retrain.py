"""Retraining on new filings: the token count since the last cpt version, the watcher, the line lock, and the
whole loop: fixture filings land on S3 → retrain → a promoted champion, with a racing retrain standing down."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
from pathlib import Path

import pytest

from finmerge.config import load_config
from finmerge.core import storage
from finmerge.demo.edinet import write_fixture_filings
from finmerge.registry.retrain import commit_scan, count_tokens, decide, new_batches, scan_new_objects
from finmerge.runner.locks import LineBusy, line_lock

ROOT = Path(__file__).resolve().parents[1]


class CharTokenizer:
    """One token per character: counts are checkable by hand."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t) for t in texts]}


def test_count_tokens_adds_one_eos_per_document_across_batches():
    texts = ["株式会社", "", "売上高は増加", *["あ" * 3] * 5]
    assert count_tokens(texts, CharTokenizer(), batch=2) == {"docs": 8, "tokens": 4 + 0 + 6 + 15 + 8}


def _chain(tmp_path: Path, n: int) -> list[str]:
    """n dedup folders whose last chain.json lists them all (digest None = the folder itself)."""
    uris = [str(tmp_path / f"d{i}") for i in range(n)]
    chain = [{"uri": u, "digest": f"g{i}"} for i, u in enumerate(uris)]
    chain[-1]["digest"] = None
    storage.write_json(storage.join(uris[-1], "chain.json"), chain)
    return uris


def test_new_batches_are_the_folders_after_the_trained_one(tmp_path):
    d = _chain(tmp_path, 4)
    last, digest = d[-1], "g3"
    assert new_batches(last, digest, "g3") == []
    assert new_batches(last, digest, "g2") == [d[3]]
    assert new_batches(last, digest, "g0") == d[1:]
    # never trained, or trained on another lineage (other cleaning rules): everything is new
    assert new_batches(last, digest, None) == d
    assert new_batches(last, digest, "elsewhere") == d


def test_decide():
    p = {"trained_version": "3", "new_tokens": 999}
    assert decide(p, 1000) == (False, "999 new tokens < threshold 1,000; waiting for more filings")
    assert decide({**p, "new_tokens": 1000}, 1000)[0] is True
    assert decide(p, 1000, force=True)[0] is True
    assert decide({**p, "trained_version": None}, 10**9)[0] is True  # a new line trains at once


def test_watcher_sees_new_and_changed_objects_on_s3(s3_bucket, tmp_path):
    prefix = f"s3://{s3_bucket}/landing/edinet"
    state = f"s3://{s3_bucket}/store/retrain/watch.json"
    storage.write_bytes(f"{prefix}/2026-11-20/S100A.zip", b"one")
    first = scan_new_objects([prefix], state)
    assert first["first_scan"] and first["new"] == [f"{prefix}/2026-11-20/S100A.zip"]
    commit_scan(state, first["listing"])
    assert scan_new_objects([prefix], state)["new"] == []
    storage.write_bytes(f"{prefix}/2026-11-21/S100B.zip", b"two")
    storage.write_bytes(f"{prefix}/2026-11-20/S100A.zip", b"one, corrected")  # a replaced package
    again = scan_new_objects([prefix], state)
    assert again["new"] == [f"{prefix}/2026-11-20/S100A.zip", f"{prefix}/2026-11-21/S100B.zip"]
    # not committed: a watcher that crashed before emitting sees the same objects next time
    assert scan_new_objects([prefix], state)["new"] == again["new"]


def _in_thread(fn, *args):
    """Run ``fn`` in a thread that sees this test's Prefect settings (they live in a context variable)."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # surfaced by the caller
            box["error"] = exc

    t = threading.Thread(target=contextvars.copy_context().run, args=(target,))
    t.start()
    return t, box


def test_line_lock_admits_one_holder_per_line(prefect_harness, caplog):
    held, release = threading.Event(), threading.Event()

    def holder():
        with line_lock("retrain", "fm-lock-test", wait_s=5):
            held.set()
            release.wait(30)

    t, box = _in_thread(holder)
    assert held.wait(60), box
    try:
        with caplog.at_level(logging.INFO), pytest.raises(LineBusy, match="fm-lock-test: retrain lock 'finm"):
            with line_lock("retrain", "fm-lock-test", wait_s=2.5):  # asks again after each Retry-After
                pass
        # a busy line is the answer the wait expects, not an error: no ERROR record for each "no" (Prefect's
        # acquisition service logs one per request it could not complete)
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        with line_lock("retrain", "another-line", wait_s=0.5):  # other lines are not blocked
            pass
    finally:
        release.set()
        t.join(30)
    assert "error" not in box
    with line_lock("retrain", "fm-lock-test", wait_s=5):  # released on exit
        pass


def test_line_lock_bounds_the_wait_for_a_holder_not_for_a_slow_api(prefect_harness, monkeypatch):
    """On a loaded machine one request to the API can take longer than the whole wait. The first contender
    must still get the line, and no slot may be lost to a cut-off request (CI once had both stand down)."""
    from prefect.client.orchestration._concurrency_limits.client import ConcurrencyLimitAsyncClient

    with line_lock("retrain", "fm-slow-api", wait_s=0):  # a free line is taken even with no wait at all
        pass
    real = ConcurrencyLimitAsyncClient.increment_concurrency_slots_with_lease

    async def slow(self, *args, **kwargs):
        await asyncio.sleep(1.0)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(ConcurrencyLimitAsyncClient, "increment_concurrency_slots_with_lease", slow)
    stood_down = threading.Event()

    def contender():
        try:
            with line_lock("retrain", "fm-slow-api", wait_s=0.3):
                stood_down.wait(30)  # hold until the other has its answer
                return "held"
        except LineBusy as exc:
            stood_down.set()
            return str(exc)

    (ta, a), (tb, b) = _in_thread(contender), _in_thread(contender)
    ta.join(90), tb.join(90)
    outcomes = sorted([a["result"], b["result"]])
    assert outcomes[1] == "held" and "is held by another run" in outcomes[0], outcomes
    monkeypatch.undo()
    with line_lock("retrain", "fm-slow-api", wait_s=0):  # both released: no slot left behind
        pass


@pytest.mark.slow
def test_new_filings_retrain_to_a_promoted_champion(s3_bucket, mlflow_server, prefect_harness, tmp_path):
    from finmerge.registry.retrain import trained_corpus
    from flows.retrain import retrain

    landing = f"s3://{s3_bucket}/landing/edinet"
    cfg = load_config(
        ROOT / "configs" / "test.yaml",
        [
            f"storage.uri=s3://{s3_bucket}/store",
            f"storage.staging_dir={tmp_path / 'staging'}",
            f"tracking.uri={mlflow_server}",
            f"tracking.experiment=retrain-{tmp_path.name}",
            f"corpus.ingest.sources=['{landing}/*.zip']",
            "registry.merged_name=fm-retrain-merged",
            "registry.cpt_name=fm-retrain-cpt",
            # gates loose enough that a tiny model trained on more text can pass; the gates have own tests
            "registry.gates.max_task_drop=1.0",
            "registry.gates.max_ppl_ratio=100.0",
            "registry.gates.min_chat_adherence=null",
            "retrain.min_new_tokens=1500",
        ],
    )
    write_fixture_filings(landing, 0, 1)

    # a new line: the first retrain trains, registers v1 and bootstraps it champion
    first = retrain(cfg, trigger="test")
    assert first["decision"] == "retrained" and first["pending"]["trained_version"] is None
    assert first["registered"]["merged"]["version"] == "1" and first["promotion"]["champion"] == "1"
    trained = trained_corpus(mlflow_server, "fm-retrain-cpt")
    assert trained == {"version": "1", "corpus_digest": first["pending"]["corpus_digest"]}

    # one small filing: counted, below the threshold, nothing trained
    write_fixture_filings(landing, 1, 1, only="事業の内容")
    waiting = retrain(cfg, trigger="test")
    p = waiting["pending"]
    assert waiting["decision"] == "waiting" and "registered" not in waiting
    assert p["trained_version"] == "1" and p["new_batches"] == 1 and 0 < p["new_tokens"] < 1500
    assert waiting["new_ingested_docs"] == p["new_docs"] > 0  # only the new filing went through clean
    assert trained_corpus(mlflow_server, "fm-retrain-cpt")["version"] == "1"

    # more filings arrive and two triggers fire at once: exactly one retrains, the other stands down
    write_fixture_filings(landing, 2, 3)
    (ta, a), (tb, b) = _in_thread(retrain, cfg, "schedule"), _in_thread(retrain, cfg, "event")
    ta.join(900), tb.join(900)
    assert "error" not in a and "error" not in b, (a, b)
    results = sorted([a["result"], b["result"]], key=lambda r: r["decision"])
    done, skipped = results
    assert [done["decision"], skipped["decision"]] == ["retrained", "skipped"], results
    assert "lock 'finmerge-retrain-fm-retrain-merged' is held" in skipped["reason"]
    # the batch of the waiting run and this one: every new token since v1 counted once
    assert done["pending"]["new_batches"] == 2 and done["pending"]["new_tokens"] >= 1500
    assert done["registered"]["merged"]["version"] == "2" and done["registered"]["cpt"]["version"] == "2"
    assert done["promotion"]["decision"] == "promoted" and done["promotion"]["champion"] == "2"

    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    aliases = client.get_registered_model("fm-retrain-merged").aliases
    assert str(aliases["champion"]) == "2" and str(aliases["previous"]) == "1"
    cpt2 = client.get_model_version("fm-retrain-cpt", "2").tags
    assert cpt2["finmerge.corpus_digest"] == done["pending"]["corpus_digest"] != trained["corpus_digest"]
    json.dumps(done, default=str)

import hashlib
import json
import os
from pathlib import Path

import pytest

from finmerge.core import storage


def _commit(uri, staging, files, meta=None):
    with storage.output_folder(uri, str(staging), meta=meta or {}) as out:
        for name, data in files.items():
            (out.path / name).parent.mkdir(parents=True, exist_ok=True)
            (out.path / name).write_bytes(data)
    return out


def test_local_folder_commit_is_atomic(tmp_path):
    uri = str(tmp_path / "stage" / "k1")
    with pytest.raises(RuntimeError):
        with storage.output_folder(uri, str(tmp_path / "staging")) as out:
            (out.path / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not storage.exists(uri) and storage.read_manifest(uri) is None
    assert not any(p.name.startswith(".partial-") for p in (tmp_path / "stage").iterdir())
    out = _commit(uri, tmp_path / "staging", {"a.txt": b"hello", "sub/b.txt": b"world"}, {"counts": {"n": 2}})
    m = storage.read_manifest(uri)
    assert m["digest"] == out.manifest["digest"] and set(m["files"]) == {"a.txt", "sub/b.txt"}
    assert out.result() == {"uri": storage.normalize(uri), "digest": m["digest"], "counts": {"n": 2}}


def test_digest_depends_on_content_only(tmp_path):
    a = _commit(str(tmp_path / "a"), tmp_path, {"x": b"1", "y": b"2"})
    b = _commit(str(tmp_path / "b"), tmp_path, {"y": b"2", "x": b"1"})
    c = _commit(str(tmp_path / "c"), tmp_path, {"x": b"1", "y": b"3"})
    assert a.manifest["digest"] == b.manifest["digest"] != c.manifest["digest"]


def test_s3_roundtrip_verified(s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/runs/stage/k"
    out = _commit(uri, tmp_path / "staging", {"w.bin": bytes(range(256)) * 100, "cfg.json": b"{}"})
    assert storage.read_manifest(uri)["digest"] == out.manifest["digest"]
    local = storage.stage_folder(uri, str(tmp_path / "staging"))
    assert (local / "w.bin").read_bytes() == bytes(range(256)) * 100
    # a corrupted object is caught on download, not silently used
    storage.write_bytes(f"{uri}/w.bin", b"tampered")
    import shutil

    shutil.rmtree(local)
    with pytest.raises(storage.StorageError, match="sha256"):
        storage.stage_folder(uri, str(tmp_path / "staging"))


def test_incomplete_folder_is_refused(s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/half"
    storage.write_bytes(f"{uri}/model.safetensors", b"partial")
    with pytest.raises(storage.StorageError, match="incomplete"):
        storage.stage_folder(uri, str(tmp_path))


def test_json_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(storage.StorageError, match="bad.json: invalid JSON"):
        storage.read_json(str(p))
    storage.write_json(str(tmp_path / "ok.json"), {"a": 1})
    assert json.loads((tmp_path / "ok.json").read_text()) == {"a": 1}


def _identity(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _stage_and_keep_reading(uri, staging, endpoint, expected, callers, start, returned, report):
    """One caller (a separate process, as a rank of a training job is): stage ``uri``, then read and verify
    every file of the returned copy, pass after pass, until every other caller has returned too (and once
    more after that). Anything missing, changed, or deleted and put back (another inode) is recorded."""
    storage.configure(endpoint)
    assert storage.read_manifest(uri) is not None  # the S3 client is made (slow) before the start line
    start.wait(120)  # all callers begin staging together
    path = storage.stage_folder(uri, staging)
    seen = {rel: _identity(path / rel) for rel in expected}  # the copy this caller was given
    with returned.get_lock():
        returned.value += 1
    problems: list[str] = []
    passes_while_others_staged = 0
    while True:
        others_done = returned.value >= callers  # read before the pass: did it overlap anyone's staging?
        for rel, sha in expected.items():
            try:
                with open(path / rel, "rb") as fh:
                    got = hashlib.sha256(fh.read()).hexdigest()
            except FileNotFoundError:
                problems.append(f"{rel}: missing")
                continue
            if got != sha:
                problems.append(f"{rel}: sha256 {got[:12]} != {sha[:12]}")
            if _identity(path / rel) != seen[rel]:
                problems.append(f"{rel}: deleted and replaced by another copy")
        if others_done:
            break
        passes_while_others_staged += 1
    Path(report).write_text(json.dumps({"path": str(path), "problems": problems[:50],
                                        "overlapping_passes": passes_while_others_staged}))  # fmt: skip


def test_concurrent_staging_of_one_folder_gives_every_caller_a_complete_copy(s3_bucket, tmp_path):
    """The ranks of a training job stage the same S3 inputs at once. Each caller (its own process) keeps
    verifying the copy it was given while the others are still staging: no file may go missing, change,
    or be deleted and replaced under it, and all end with the same single copy."""
    import multiprocessing

    uri = f"s3://{s3_bucket}/inputs/tokens"
    with storage.output_folder(uri, str(tmp_path / "w")) as out:
        for i in range(12):
            (out.path / f"shard-{i}.npy").write_bytes(os.urandom(256 * 1024))
    expected = {rel: info["sha256"] for rel, info in storage.read_manifest(uri)["files"].items()}
    staging, callers = str(tmp_path / "staging"), 6
    spawn = multiprocessing.get_context("spawn")
    start, returned = spawn.Barrier(callers), spawn.Value("i", 0)
    reports = [tmp_path / f"caller-{i}.json" for i in range(callers)]
    procs = [
        spawn.Process(
            target=_stage_and_keep_reading,
            args=(uri, staging, storage.endpoint_url(), expected, callers, start, returned, str(report)),
        )
        for report in reports
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * callers
    results = [json.loads(r.read_text()) for r in reports]
    assert [r["problems"] for r in results] == [[]] * callers
    # the windows overlapped: some caller verified its copy while another was still staging
    assert max(r["overlapping_passes"] for r in results) > 0
    [path] = {r["path"] for r in results}
    assert {p.name for p in Path(path).iterdir()} == {*expected, storage.MANIFEST}
    assert not [p for p in Path(path).parent.iterdir() if p.name.startswith(".partial-")]


def test_retry_budget_comes_from_the_config_and_reaches_stage_processes(tmp_path):
    from finmerge.config import load_config
    from finmerge.runner.stage import RunContext

    cfg = load_config(
        None,
        [
            "storage.retry_attempts=7",
            "storage.retry_budget_s=45",
            f"tracking.uri='sqlite:///{tmp_path}/mlflow.db'",
        ],
    )
    try:
        ctx = RunContext.create(cfg)
        assert (storage.retry_policy().attempts, storage.retry_policy().budget_s) == (7, 45.0)
        # a stage in another process rebuilds the policy from the (serialisable) context
        ctx = RunContext.model_validate_json(ctx.model_dump_json())
        assert (ctx.retry_attempts, ctx.retry_budget_s) == (7, 45.0)
    finally:
        storage.configure(None)
    assert storage.retry_policy() == storage.UPLOAD_RETRY

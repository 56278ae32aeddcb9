"""Nothing finmerge did not write is ever replaced: every case of the careless-user probe, locally and on S3.

Each test snapshots the files around the command and asserts that nothing outside the command's own
output changed (and, for a refused command, that nothing changed at all).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from finmerge.cli import main
from finmerge.core import storage
from tests.helpers import tiny_model, write_corpus


def snapshot(root: Path, skip: tuple[str, ...] = ("staging",)) -> dict[str, str]:
    """Every file and folder under ``root`` with its sha256 (files) — the user's world as it stands."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.split("/")[0] in skip:
            continue
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name, seed in (("base", 1), ("instruct", 2), ("domain", 3)):
        tiny_model(root / "m" / name, seed=seed)
    return root / "m"


@pytest.fixture()
def world(models, tmp_path, monkeypatch) -> Path:
    """A working directory holding three models under m/, raw filings under raw/ and user notes."""
    shutil.copytree(models, tmp_path / "m")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text(
        json.dumps({"id": "a", "text": "当社の売上高は前期比で増加しました。" * 20}, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "notes.txt").write_text("my notes")
    (tmp_path / "afile").write_text("a user's file")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _merge(out: str, *extra: str) -> int:
    return main(
        ["merge", "--base", "m/base", "--instruct", "m/instruct", "--domain", "m/domain", "--out", out,
         "--set", "storage.staging_dir=staging", *extra]
    )  # fmt: skip


@pytest.mark.parametrize(
    "out, why",
    [
        ("m", "contains the input m/base"),
        ("m/domain", "is the input m/domain"),
        ("m/base/sub", "lies inside the input m/base"),
        ("existing", "notes.txt"),
        ("afile", "a file that is not a folder"),
    ],
)
def test_merge_never_replaces_inputs_or_user_files(world, capsys, out, why):
    before = snapshot(world)
    assert _merge(out) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and why in err and err.count("\n") == 1, err
    assert snapshot(world) == before  # not a byte changed, no temp folder left


@pytest.mark.parametrize("out", ["m", "m/domain", "m/base/sub", ".", "..", "/"])
def test_overwrite_flag_never_reaches_inputs_cwd_or_root(world, capsys, out):
    before = snapshot(world)
    assert _merge(out, "--overwrite") == 1
    assert "refusing" in capsys.readouterr().err
    assert snapshot(world) == before


def test_overwrite_flag_replaces_a_user_folder_and_a_rerun_replaces_our_own_output(world, capsys):
    assert _merge("existing", "--overwrite") == 0
    assert not (world / "existing" / "notes.txt").exists()
    assert storage.read_manifest(str(world / "existing"))["stage"] == "merge"
    capsys.readouterr()
    # A run that succeeds is tracked: the local MLflow store (.finmerge/) gains its run, nothing else changes.
    skip = ("staging", "existing", ".finmerge")
    before = snapshot(world, skip=skip)
    assert _merge("existing") == 0  # our own merge output: replaced without a flag
    assert snapshot(world, skip=skip) == before
    assert not [p for p in world.iterdir() if p.name.startswith((".old-", ".partial-"))]


def test_output_of_another_stage_is_not_replaced(world, capsys):
    write_corpus(world / "corpus", ["当社の売上高は増加しました。" * 10])
    assert storage.read_manifest(str(world / "corpus"))["stage"] != "merge"
    before = snapshot(world)
    assert _merge("corpus") == 1
    assert "not a merge output" in capsys.readouterr().err
    assert snapshot(world) == before


def test_ingest_output_equal_to_input_and_clean_into_cwd_are_refused(world, capsys):
    before = snapshot(world)
    staging = ["--set", "storage.staging_dir=staging"]
    assert main(["corpus", "ingest", "--input", "raw", "--output", "raw", *staging]) == 1
    assert "is the input raw" in capsys.readouterr().err
    assert main(["corpus", "ingest", "--input", "raw/*.jsonl", "--output", "raw/out", *staging]) == 1
    assert "lies inside the input raw/*.jsonl" in capsys.readouterr().err
    assert snapshot(world) == before
    assert main(["corpus", "ingest", "--input", "raw", "--output", "c/ingest", *staging]) == 0
    capsys.readouterr()
    before = snapshot(world)
    assert main(["corpus", "clean", "--input", "c/ingest", "--output", ".", *staging]) == 1
    assert "current directory" in capsys.readouterr().err
    assert snapshot(world) == before


def test_a_failed_replacement_keeps_the_previous_output(world, capsys):
    assert _merge("out") == 0
    before = snapshot(world)
    # a real late failure: the output overflows float16 after the merge pass has begun writing
    assert _merge("out", "--set", "merge.alpha=1e30", "--dtype", "float16") == 1
    assert "output tensor" in capsys.readouterr().err
    assert snapshot(world) == before


def test_evaluate_results_file_never_replaces_a_user_file(world, capsys):
    before = snapshot(world)
    rc = main(
        ["evaluate", "--model", "m/base", "--out", "afile.json", "--set", "storage.staging_dir=staging"]
    )
    assert rc == 1  # afile.json does not exist but there is nothing to evaluate: refused before loading
    (world / "mine.json").write_text("{}")
    before = snapshot(world)
    rc = main(["evaluate", "--model", "m/base", "--out", "mine.json", "--set", "storage.staging_dir=staging"])
    assert rc == 1 and "no finmerge evaluation wrote" in capsys.readouterr().err
    assert snapshot(world) == before


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750), (0o077, 0o700)])
def test_output_folders_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with storage.output_folder(str(tmp_path / "out"), str(tmp_path / "st"), stage="t") as out:
            (out.path / "sub").mkdir()
            (out.path / "sub" / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "out" / "sub").stat().st_mode) == mode


# -- S3 ---------------------------------------------------------------------------------------------------
def _objects(bucket: str, prefix: str = "") -> dict[str, str]:
    fs, root = storage.filesystem(f"s3://{bucket}/{prefix}")
    fs.invalidate_cache()
    return {p: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in fs.find(f"{bucket}/{prefix}")}


def _write(uri: str, files: dict[str, str], staging: Path, stage: str = "t", overwrite: bool = False):
    with storage.output_folder(uri, str(staging), stage=stage, overwrite=overwrite) as out:
        for name, text in files.items():
            (out.path / name).write_text(text)
    return out.manifest


@contextlib.contextmanager
def _network_dies_after(n_uploads: int, uri: str, exc: BaseException):
    """The S3 client (s3fs, not finmerge) uploads ``n_uploads`` objects, then every upload fails with
    ``exc``; one attempt only, so the commit gives up at once instead of retrying for minutes."""
    fs, _ = storage.filesystem(uri)
    real, done = fs.put_file, []

    def put_file(*args, **kwargs):
        if len(done) >= n_uploads:
            raise exc
        done.append(args[1])
        return real(*args, **kwargs)

    fs.put_file = put_file
    storage.configure(storage.endpoint_url(), storage.RetryPolicy(attempts=1))
    try:
        yield
    finally:
        fs.put_file = real
        storage.configure(storage.endpoint_url())


def test_s3_prefix_with_foreign_objects_is_never_written(s3_bucket, tmp_path):
    fs, _ = storage.filesystem(f"s3://{s3_bucket}/x")
    fs.pipe_file(f"{s3_bucket}/data/report.pdf", b"user data")
    before = _objects(s3_bucket)
    with pytest.raises(storage.OutputRefused, match="report.pdf"):
        _write(f"s3://{s3_bucket}/data", {"a": "1"}, tmp_path)
    with pytest.raises(storage.OutputRefused, match="root of a bucket"):
        _write(f"s3://{s3_bucket}", {"a": "1"}, tmp_path, overwrite=True)
    with pytest.raises(storage.OutputRefused, match="is the input"):
        storage.check_output(f"s3://{s3_bucket}/data/", "t", [f"s3://{s3_bucket}/data"], overwrite=True)
    assert _objects(s3_bucket) == before

    # our own output plus a file someone dropped into it: refused too (the file would be lost)
    _write(f"s3://{s3_bucket}/ours", {"a": "1", "b": "2"}, tmp_path)
    fs.pipe_file(f"{s3_bucket}/ours/extra.txt", b"dropped in")
    before = _objects(s3_bucket)
    with pytest.raises(storage.OutputRefused, match="extra.txt"):
        _write(f"s3://{s3_bucket}/ours", {"a": "3"}, tmp_path)
    assert _objects(s3_bucket) == before


def test_s3_replacing_our_output_drops_stale_files_and_keeps_the_old_one_on_failure(s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/runs/out"
    _write(uri, {"a": "1", "b": "2"}, tmp_path)
    m = _write(uri, {"a": "3", "c": "4"}, tmp_path)  # same stage: replaced, b is stale and removed
    assert set(_objects(s3_bucket, "runs")) == {
        f"{s3_bucket}/runs/out/{n}" for n in ("a", "c", "_manifest.json")
    }
    assert storage.read_manifest(uri)["digest"] == m["digest"]
    before = _objects(s3_bucket)

    with _network_dies_after(1, uri, ConnectionResetError("endpoint gone")):
        with pytest.raises(storage.StorageError, match="endpoint gone"):
            _write(uri, {"a": "5", "d": "6"}, tmp_path)
    assert _objects(s3_bucket) == before  # the previous output is back, whole, and nothing else is left


def test_s3_interrupted_upload_of_our_own_stage_can_be_replaced(s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/ckpt/step"
    with _network_dies_after(1, uri, KeyboardInterrupt()):  # the process is stopped mid-upload
        with pytest.raises(KeyboardInterrupt):
            _write(uri, {"a": "1", "b": "2"}, tmp_path, stage="checkpoint")
    assert storage.read_manifest(uri) is None  # incomplete: never read as an output
    with pytest.raises(storage.OutputRefused):  # another stage may not take it over
        _write(uri, {"a": "1"}, tmp_path, stage="merge")
    _write(uri, {"a": "1", "b": "2"}, tmp_path, stage="checkpoint")  # the same stage finishes the job
    assert storage.read_manifest(uri)["stage"] == "checkpoint"
    assert set(_objects(s3_bucket, "ckpt")) == {
        f"{s3_bucket}/ckpt/step/{n}" for n in ("a", "b", "_manifest.json")
    }


def test_checkpoint_folder_holding_other_files_is_refused_and_prune_spares_them(tmp_path):
    from finmerge.train.checkpoint import CheckpointStore, step_name

    root = tmp_path / "out.checkpoints"
    for step in (1, 2, 3):
        _write(str(root / step_name(step)), {"w": str(step)}, tmp_path / "st", stage="checkpoint")
    (root / step_name(4)).mkdir()  # a half-written one a crash left: ignored, not refused
    store = CheckpointStore(str(root), str(tmp_path / "st"), keep_last=1)
    store.check_root([])
    # a step-named folder that some other stage wrote is neither resumed from nor pruned
    _write(str(root / step_name(0)), {"w": "0"}, tmp_path / "st", stage="merge")
    with pytest.raises(storage.OutputRefused, match="step-00000000"):
        store.check_root([])
    assert store.steps() == [1, 2, 3] and store.prune() == [1, 2]
    assert (root / step_name(0) / "w").read_text() == "0"
    (root / "notes.txt").write_text("mine")
    with pytest.raises(storage.OutputRefused, match="notes.txt"):
        store.check_root([])
    with pytest.raises(storage.OutputRefused, match="is the input"):
        CheckpointStore(str(tmp_path / "m.checkpoints"), "").check_root([str(tmp_path / "m.checkpoints")])

"""A careless user's first hour, command by command: every mistake is one line on stderr and a non-zero
exit, never a traceback, and no file or folder outside the command's own output changes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from finmerge.cli import main
from tests.helpers import tiny_model, write_corpus
from tests.test_overwrite import snapshot

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Models, a raw folder, a corpus, harness data and a few user files, in one working directory."""
    root = tmp_path_factory.mktemp("careless")
    for name, seed in (("base", 1), ("instruct", 2), ("domain", 3)):
        tiny_model(root / "m" / name, seed=seed)
    shutil.copytree(root / "m" / "domain", root / "notok")
    for p in (root / "notok").iterdir():
        if p.name.startswith(("tokenizer", "special_tokens")):
            p.unlink()
    shutil.copytree(root / "m" / "domain", root / "badtok")  # same vocab, but a part no tokenizer library has
    tok = json.loads((root / "badtok" / "tokenizer.json").read_text(encoding="utf-8"))
    tok["pre_tokenizer"] = {"type": "FromANewerRelease"}
    (root / "badtok" / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    (root / "raw").mkdir()
    text = "当社の売上高は前期比で増加しました。営業利益も堅調に推移しています。" * 8
    (root / "raw" / "a.jsonl").write_text(json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\n")
    write_corpus(root / "corpus", [text])
    (root / "noid.jsonl").write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    (root / "badutf8.jsonl").write_bytes(
        json.dumps({"id": "x", "text": text}, ensure_ascii=False).encode()
        + b"\n"
        + b'{"id": "y", "text": "\xff\xfe"}\n'
    )
    (root / "empty-harness").mkdir()
    (root / "typo.yaml").write_text(
        "merge_method: task_arithmetic\nbase_model: m/base\ndtpye: float32\nmodels:\n"
        "  - model: m/instruct\n    parameters: {weight: 1.0}\n  - model: m/domain\n    parameters: {wieght: 1.0}\n"
    )
    (root / "dup.yaml").write_text("merge:\n  alpha: 0.5\nname: x\nmerge:\n  beta: 0.5\n")
    (root / "notes.txt").write_text("mine")
    return root


def _case(world: Path, argv: list[str], capsys) -> tuple[int, str]:
    cwd = os.getcwd()
    os.chdir(world)
    try:
        rc = main([*argv, "--set", "storage.staging_dir=staging"])
    finally:
        os.chdir(cwd)
    return rc, capsys.readouterr().err


MERGE = ["merge", "--base", "m/base", "--instruct", "m/instruct"]
EVAL = ["evaluate", "--model", "m/base", "--out", "out/ev"]
CASES = {
    # output locations that hold what finmerge did not write
    "merge into the models' parent": ([*MERGE, "--domain", "m/domain", "--out", "m"], "contains the input"),
    "merge onto its domain input": ([*MERGE, "--domain", "m/domain", "--out", "m/domain"], "is the input"),
    "merge onto a user file": ([*MERGE, "--domain", "m/domain", "--out", "notes.txt"], "not a folder"),
    "ingest onto its input": (["corpus", "ingest", "--input", "raw", "--output", "raw"], "is the input raw"),
    "clean into the cwd": (["corpus", "clean", "--input", "corpus", "--output", "."], "current directory"),
    "analyze onto an input": (
        [
            "analyze",
            "--base",
            "m/base",
            "--instruct",
            "m/instruct",
            "--domain",
            "m/domain",
            "--out",
            "m/base",
        ],
        "is the input",
    ),
    # inputs that are not there or not what they claim to be
    "merge without a tokenizer": ([*MERGE, "--domain", "notok", "--out", "out/mg"], "no tokenizer files"),
    "merge with a broken tokenizer": (
        [*MERGE, "--domain", "badtok", "--out", "out/mg"],
        "badtok: the domain model's tokenizer does not load",
    ),
    "merge with a missing input": ([*MERGE, "--domain", "m/nope", "--out", "out/mg"], "m/nope"),
    "ingest a missing folder": (["corpus", "ingest", "--input", "nope", "--output", "out/i"], "nope"),
    "dedup with a wrong --prev": (
        ["corpus", "dedup", "--input", "corpus", "--output", "out/d", "--prev", "m/base"],
        "m/base",
    ),
    "a model folder as a corpus": (["corpus", "clean", "--input", "m/base", "--output", "out/c"], "m/base"),
    "tokenize with a missing model": (
        ["tokenize", "--corpus", "corpus", "--model", "m/nope", "--out", "out/t"],
        "m/nope",
    ),
    "clean on records without an id": (
        ["corpus", "clean", "--input", "noid.jsonl", "--output", "out/c"],
        "line 1",
    ),
    "a byte that is not UTF-8": (
        ["corpus", "dedup", "--input", "badutf8.jsonl", "--output", "out/d"],
        "line 2",
    ),
    "a forgotten --input": (["corpus", "ingest", "--output", "out/i"], "--input"),
    "pretrain on missing data": (
        ["pretrain", "--model", "m/base", "--data", "nope", "--out", "out/p"],
        "nope",
    ),
    # evaluation with nothing to evaluate
    "evaluate a missing harness folder": ([*EVAL, "--tasks", "fin-harness:nope"], "harness folder not found"),
    "evaluate an empty harness folder": ([*EVAL, "--tasks", "empty-harness"], "holds no task"),
    "evaluate nothing at all": (EVAL, "nothing to evaluate"),
    "evaluate on an unknown device": ([*EVAL, "--heldout", "corpus/docs.jsonl", "--device", "tpu9"], "tpu9"),
    "evaluate a missing held-out file": ([*EVAL, "--heldout", "nope.jsonl"], "nope.jsonl"),
    # config mistakes
    "a typo in a mergekit YAML": (["merge", "--config", "typo.yaml", "--out", "out/mg"], "dtpye"),
    "a duplicate key in a config": (["config", "validate", "--config", "dup.yaml"], "duplicate key 'merge'"),
    "an unknown config key": (["config", "validate", "--set", "merge.alhpa=1"], "merge.alhpa"),
    "a config file that is missing": (["config", "validate", "--config", "nope.yaml"], "nope.yaml"),
    # MLflow would refuse it only when registering, after the whole pipeline had run
    "a model name MLflow refuses": (
        ["run", "--set", "registry.cpt_name=cpt-lr1.5e-4"],
        "registry.cpt_name: Value error, 'cpt-lr1.5e-4': MLflow refuses . in a registered-model name",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_mistake_is_one_line_non_zero_and_changes_nothing(world, capsys, name):
    argv, needle = CASES[name]
    before = snapshot(world, skip=("staging", "out"))
    rc, err = _case(world, argv, capsys)
    assert rc != 0, f"{name}: exit 0"
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("finmerge: "), err
    assert "internal error" not in err, err  # a user mistake, not a bug
    assert needle in err, err
    assert snapshot(world, skip=("staging", "out")) == before, f"{name}: files changed"
    assert not list((world / "out").glob("*")) if (world / "out").exists() else True


def test_debug_shows_the_traceback(world, capsys):
    cwd = os.getcwd()
    os.chdir(world)
    try:
        with pytest.raises(Exception, match="nothing to evaluate"):
            main(["--debug", *EVAL])
    finally:
        os.chdir(cwd)


def test_ctrl_c_is_one_line_and_exit_130(world, tmp_path):
    """SIGINT while the command waits on S3 (a server that accepts and never answers): exit 130, one line;
    also when the parent ignores SIGINT (nohup, a job launcher), which a child inherits."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    connected = threading.Event()
    held = []

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            connected.set()

    threading.Thread(target=accept, daemon=True).start()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{listener.getsockname()[1]}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "finmerge.cli", "corpus", "ingest", "--input", "s3://bucket/raw",
         "--output", str(tmp_path / "i"), "--set", f"storage.staging_dir={tmp_path / 'st'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        assert connected.wait(120), "the command never reached S3"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        listener.close()
        for c in held:
            c.close()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["finmerge: interrupted; nothing half-written was committed"], err
    assert not (tmp_path / "i").exists()


def test_set_values_are_typed_by_their_field(world, capsys):
    rc, _ = _case(world, ["config", "show", "--set", "corpus.ingest.edinet.start=2024-06-17",
                          "--set", "name=no", "--set", "tracking.experiment=on"], capsys)  # fmt: skip
    assert rc == 0

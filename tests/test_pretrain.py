"""Continual pretraining: schedule, loop, checkpoints and exact resume, launch as a child job, reporting."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from finmerge.config import PretrainConfig, TrainConfig
from finmerge.core import storage, tracking
from finmerge.models import loading as modelio
from finmerge.train import flops
from finmerge.train.checkpoint import CheckpointStore, flatten_optimizer, unflatten_optimizer
from finmerge.train.pretrain import TrainData, checkpoint_root, lr_at, pretrain, total_steps, train_loop
from finmerge.train.tokenize import pack_documents
from tests.helpers import TEXTS, tiny_model, tiny_tokens, write_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "base")


@pytest.fixture(scope="module")
def tokens(base, tmp_path_factory):
    return tiny_tokens(base, tmp_path_factory.mktemp("tok"))


def _rows(base, n=48, seq=16):
    tok = modelio.load_tokenizer(base)
    blocks, _ = pack_documents(iter(TEXTS), tok, seq)
    return TrainData(torch.from_numpy(blocks[:n].astype(np.int64)))


def _same_weights(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


EXACT = {"lr": 5e-3, "warmup_steps": 2, "batch_size": 4, "threads": 1, "deterministic": True}


def test_lr_schedule_and_step_budget():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(99, 100, cfg) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(55, 100, cfg) < lr_at(20, 100, cfg)
    assert lr_at(50, 100, cfg.model_copy(update={"schedule": "constant"})) == 1.0
    assert lr_at(55, 100, cfg.model_copy(update={"schedule": "linear"})) == pytest.approx(0.55)
    assert total_steps(100, 16, TrainConfig(batch_size=10, grad_accum=2, epochs=2)) == 10
    assert total_steps(100, 16, TrainConfig(batch_size=10, epochs=2), processes=2) == 10
    assert total_steps(100, 16, TrainConfig(batch_size=10, epochs=2, max_steps=3)) == 3
    # token budget: 10 rows × 2 accum × 16 tokens = 320 tokens per step
    assert total_steps(100, 16, TrainConfig(batch_size=10, grad_accum=2, max_tokens=1000)) == 4


def test_training_lowers_loss_logs_lr_it_used_and_is_deterministic(base):
    cfg = TrainConfig(lr=5e-3, warmup_steps=2, max_steps=25, batch_size=8, log_every=1, threads=1)
    data = _rows(base)
    m1 = modelio.load_causal_lm(base)
    r1 = train_loop(m1, data, cfg)
    assert r1.history[-1]["loss"] < r1.history[0]["loss"] * 0.8
    assert [h["lr"] for h in r1.history[:3]] == pytest.approx([lr_at(s, 25, cfg) for s in range(3)])
    assert all(np.isfinite(h["grad_norm"]) and h["tokens_per_s"] > 0 and h["mfu"] > 0 for h in r1.history)
    assert r1.tokens == 25 * 8 * 16
    m2 = modelio.load_causal_lm(base)
    train_loop(m2, data, cfg)
    assert not _same_weights(m1.state_dict(), m2.state_dict())


def test_grad_accumulation_equals_the_bigger_batch(base):
    """accelerate's accumulation averages micro-batches: 2 × 4 rows match 1 × 8 rows (up to float error)."""
    data = _rows(base)
    big = modelio.load_causal_lm(base)
    train_loop(big, data, TrainConfig(**{**EXACT, "batch_size": 8, "max_steps": 4}))
    acc = modelio.load_causal_lm(base)
    train_loop(acc, data, TrainConfig(**{**EXACT, "batch_size": 4, "grad_accum": 2, "max_steps": 4}))
    for (name, a), b in zip(big.state_dict().items(), acc.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_masked_labels_are_ignored(base):
    """-100 labels (instruction tuning masks the prompt) drop out of the loss: it equals cross-entropy over
    the unmasked positions only."""
    data = _rows(base, n=8)
    labels = torch.full_like(data.input_ids, -100)
    labels[:, 8:] = data.input_ids[:, 8:]
    batch = TrainData(data.input_ids, labels).batch(torch.arange(8))
    m = modelio.load_causal_lm(base)
    with torch.no_grad():
        logits = m(input_ids=batch["input_ids"]).logits[:, :-1]
        part = m(**batch).loss
        full = m(**data.batch(torch.arange(8))).loss
    target = batch["labels"][:, 1:]
    keep = target != -100
    manual = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    assert torch.allclose(part, manual, atol=1e-6)
    assert not torch.isclose(full, part)


def test_resume_from_any_checkpoint_is_bitwise_exact_and_prunes(base, tmp_path):
    data = _rows(base)
    cfg = TrainConfig(**EXACT, max_steps=20, log_every=1)
    reference = modelio.load_causal_lm(base)
    train_loop(reference, data, cfg)
    want = reference.state_dict()

    store = CheckpointStore(str(tmp_path / "ck"), str(tmp_path / "st"), keep_last=2, keep_steps=[3], every=3)
    first = modelio.load_causal_lm(base)
    r_first = train_loop(first, data, cfg, checkpoints=store)
    assert store.steps() == [3, 15, 18]  # keep-last-2 plus the marked step 3; 6, 9, 12 pruned
    assert not _same_weights(first.state_dict(), want)  # checkpointing does not perturb training

    # A crash mid-save leaves a folder without a manifest: it is not a checkpoint.
    (tmp_path / "ck" / "step-00000019").mkdir()
    (tmp_path / "ck" / "step-00000019" / "model.safetensors").write_bytes(b"partial")
    assert store.latest() == 18
    for start in (18, 3):  # resume from the newest and from the marked early one
        for s in [s for s in store.steps() if s > start]:
            storage.remove(storage.join(store.uri(s), storage.MANIFEST))
        model = modelio.load_causal_lm(base)
        r = train_loop(model, data, cfg, checkpoints=store)
        assert r.resumed_from == start
        assert not _same_weights(model.state_dict(), want), f"resumed from {start}"
        assert [h["loss"] for h in r.history] == [h["loss"] for h in r_first.history]


def test_checkpoint_is_pickle_free_and_a_loadable_hf_folder(base, tmp_path):
    out = str(tmp_path / "cpt")
    cfg = PretrainConfig(**EXACT, max_steps=5, checkpoint_every=2, keep_last=1)
    st = str(tmp_path / "st")
    tok = tiny_tokens(base, tmp_path)
    res = pretrain(str(base), tok["uri"], out, cfg, st)
    ck = Path(checkpoint_root(out)) / "step-00000004"
    names = {p.name for p in ck.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "optimizer.safetensors",
        "rng.safetensors",
    } <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))]
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["scheduler"]["last_epoch"] == 4 and state["cursor"] > 0
    assert modelio.load_causal_lm(ck).config.vocab_size == modelio.load_causal_lm(base).config.vocab_size
    assert res["checkpoints"] == {"4": storage.join(checkpoint_root(out), "step-00000004")}
    assert "exp_avg" in "".join(load_file(ck / "optimizer.safetensors"))


def test_optimizer_state_round_trips_through_safetensors_layout(base):
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    m = modelio.load_causal_lm(base)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95))
    b = _rows(base, n=4).batch(torch.arange(4))
    m(**b).loss.backward()
    opt.step()
    osd = get_optimizer_state_dict(m, opt)
    tensors, meta = flatten_optimizer(osd)
    back = unflatten_optimizer(tensors, json.loads(json.dumps(meta)))
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)
    for fqn, slots in osd["state"].items():
        for k, v in slots.items():
            assert torch.equal(back["state"][fqn][k], v)


def test_pretrain_stage_reports_and_commits_a_loadable_model(base, tokens, tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in TEXTS[:8]))
    logged = []
    cfg = PretrainConfig(
        lr=5e-3, warmup_steps=2, max_steps=12, batch_size=8, log_every=3, eval_every=3, checkpoint_every=None
    )
    res = pretrain(
        str(base),
        tokens["uri"],
        str(tmp_path / "cpt"),
        cfg,
        str(tmp_path / "st"),
        heldout_uri=str(heldout),
        on_log=lambda step, m: logged.append((step, m)),
    )
    assert res["metrics"]["pretrain/steps"] == 12
    assert res["metrics"]["pretrain/heldout_ppl_end"] < res["metrics"]["pretrain/heldout_ppl_start"]
    assert 0 < res["metrics"]["pretrain/mfu"] < 1
    assert [s for s, _ in logged] == [0, 3, 6, 9, 11]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu", "eval_ppl"} <= set(logged[0][1])
    folder = storage.local_path(res["uri"])
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "loss.png"} <= {
        p.name for p in folder.iterdir()
    }
    card = (folder / "README.md").read_text()
    assert "θ_cpt" in card and storage.read_manifest(str(base))["digest"] in card
    assert "× seq 16 ×" in card  # the block length of the tokens folder, the only one trained on
    cpt, orig = modelio.load_causal_lm(folder), modelio.load_causal_lm(base)
    assert _same_weights(cpt.state_dict(), orig.state_dict())
    assert res["lineage"]["base_digest"] == storage.read_manifest(str(base))["digest"]
    assert res["checkpoints"] == {}  # checkpoint_every unset


def test_the_cpt_of_a_bf16_base_keeps_fp32_weights_and_merges_with_it(base, tokens, tmp_path, monkeypatch):
    """Continual pretraining keeps fp32 weights (the domain vector's small deltas would not survive bf16),
    so a bf16 base's CPT is fp32: the merge takes that triplet, each input in its own format, through the
    kernels, and writes the instruct model's bf16."""
    from finmerge.config import MergeConfig
    from finmerge.merge.execute import merge_models

    b16 = {}
    for role in ("base", "instruct"):  # a bf16 base and its instruct model (here the same weights)
        model = modelio.load_causal_lm(base).to(torch.bfloat16)
        model.save_pretrained(str(tmp_path / role), safe_serialization=True)
        modelio.load_tokenizer(base).save_pretrained(str(tmp_path / role))
        b16[role] = str(tmp_path / role)
    cfg = PretrainConfig(lr=5e-3, warmup_steps=1, max_steps=2, batch_size=4, checkpoint_every=None)
    res = pretrain(b16["base"], tokens["uri"], str(tmp_path / "cpt"), cfg, str(tmp_path / "st"))
    cpt = storage.local_path(res["uri"])
    assert {v.dtype for v in load_file(str(cpt / "model.safetensors")).values()} == {torch.float32}
    monkeypatch.setenv("FINMERGE_FUSED", "1")  # a tiny model: force the kernels
    got = merge_models(
        b16["base"], b16["instruct"], str(cpt), str(tmp_path / "m"), MergeConfig(), str(tmp_path / "st")
    )
    assert got["metrics"]["merge/fused_share"] == 1.0
    merged = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {v.dtype for v in merged.values()} == {torch.bfloat16}


def test_foreign_tokens_are_a_clear_error(base, tokens, tmp_path):
    small = tiny_model(tmp_path / "small", shape=modelio_shape(vocab=259))
    with pytest.raises(ValueError, match=r"outside the model's vocabulary \(259\)"):
        pretrain(str(small), tokens["uri"], str(tmp_path / "o2"), PretrainConfig(), str(tmp_path))


def modelio_shape(vocab: int):
    from tests.helpers import TINY

    return TINY.model_copy(update={"vocab_size": vocab})


def test_flops_per_token_and_peak_table(base):
    m = modelio.load_causal_lm(base)
    c = m.config
    n_all = sum(p.numel() for p in m.parameters())
    emb = m.get_input_embeddings().weight.numel()
    expected = (
        6 * (n_all - emb + (emb if c.tie_word_embeddings else 0))
        + 12 * c.num_hidden_layers * c.hidden_size * 16
    )
    assert flops.flops_per_token(m, 16) == expected
    assert flops.gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert flops.gpu_peak_tflops("Some Unknown GPU") is None
    assert flops.mfu(1000.0, 1e9, 1.0) == pytest.approx(1.0)


def test_pretrain_reads_and_writes_s3_and_resumes_from_s3_checkpoints(base, tokens, tmp_path, s3_bucket):
    st = str(tmp_path / "st")
    tok_s3 = f"s3://{s3_bucket}/tokens"
    with storage.output_folder(tok_s3, st) as out:
        for p in Path(tokens["uri"]).iterdir():
            if p.name != storage.MANIFEST:
                (out.path / p.name).write_bytes(p.read_bytes())
    out_s3 = f"s3://{s3_bucket}/cpt"
    cfg = PretrainConfig(**EXACT, max_steps=6, checkpoint_every=2, keep_last=5)
    res = pretrain(str(base), tok_s3, out_s3, cfg, st)
    store = CheckpointStore(checkpoint_root(out_s3), st)
    assert store.steps() == [2, 4] and storage.read_manifest(res["uri"]) is not None
    want = load_file(storage.stage_folder(out_s3, st) / "model.safetensors")
    storage.remove(storage.join(store.uri(4), storage.MANIFEST))
    res2 = pretrain(
        str(base), tok_s3, f"s3://{s3_bucket}/cpt2", cfg, st, checkpoint_uri=checkpoint_root(out_s3)
    )
    assert res2["resumed_from"] == 2
    got = load_file(storage.stage_folder(res2["uri"], st) / "model.safetensors")
    assert not _same_weights(got, want)


def _cli(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "finmerge.cli", *args, "--set", f"storage.staging_dir={tmp_path / 'st'}",
            "--set", f"storage.uri={tmp_path / 'store'}"]  # fmt: skip


def _killed_and_resumed(history, resumed_from: int) -> tuple[list, list]:
    """A metric's MLflow rows split into those logged by a killed attempt and those of the attempt that resumed
    from checkpoint ``resumed_from``, by the order they were logged in: the resumed attempt goes back to its
    checkpoint's step (if the killed one logged nothing past that checkpoint, the steps just go on)."""
    rows = sorted(history, key=lambda m: (m.timestamp, m.step))
    back = [i for i in range(1, len(rows)) if rows[i].step <= rows[i - 1].step]
    cut = back[0] if back else next(i for i, m in enumerate(rows) if m.step >= resumed_from)
    return rows[:cut], rows[cut:]


def _wait_for(predicate, proc, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_bitwise_and_reattaches_to_the_mlflow_run(
    base, tmp_path, mlflow_server, s3_bucket
):
    """The CLI job writing to S3 is SIGKILLed part-way; the same command resumes from the latest complete
    checkpoint, logs into the same MLflow run, and ends with weights bitwise equal to an uninterrupted run;
    every logged loss, lr and grad-norm value is the uninterrupted run's value at that step."""
    corpus = write_corpus(tmp_path / "corpus", TEXTS * 4)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PYTHONPATH": str(ROOT)}
    common = [
        "--set", "tokenize.seq_len=16", "--set", "pretrain.max_steps=40", "--set", "pretrain.batch_size=4",
        "--set", "pretrain.threads=1", "--set", "pretrain.deterministic=true", "--set", "pretrain.log_every=1",
        "--set", "pretrain.checkpoint_every=4", "--set", "pretrain.keep_steps=[8]", "--set", "pretrain.warmup_steps=2",
        "--set", "registry.cpt_name=cpt-sigkill", "--config", str(ROOT / "configs/test.yaml"),
        "--set", f"storage.endpoint_url={storage.endpoint_url()}",
    ]  # fmt: skip

    def cmd(out: str, *extra: str) -> list[str]:
        return _cli(
            tmp_path, "pretrain", "--model", str(base), "--data", corpus, "--out", out, *common, *extra
        )

    ref = subprocess.run(cmd(str(tmp_path / "ref")), env=env, cwd=ROOT, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = f"s3://{s3_bucket}/cpt"
    ckpts = CheckpointStore(checkpoint_root(out), str(tmp_path / "st"))
    client = tracking.client(mlflow_server)

    def runs_of(output: str) -> list:
        return client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`finmerge.output` = '{storage.normalize(output)}'",
        )

    def logged(key: str) -> list:
        runs = runs_of(out)
        return client.get_metric_history(runs[0].info.run_id, key) if runs else []

    def past_a_checkpoint() -> bool:
        """Checkpoint 12 or later is complete and the job has logged a step after its newest checkpoint."""
        latest = ckpts.latest() or 0
        return latest >= 12 and max((m.step for m in logged("loss")), default=-1) >= latest

    proc = subprocess.Popen(cmd(out), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(past_a_checkpoint, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert storage.read_manifest(out) is None  # nothing half-written at the output
    killed_at = ckpts.latest()
    keys = ("loss", "lr", "grad_norm")
    before = {key: logged(key) for key in keys}  # what the killed attempt logged
    last = max(m.step for m in before["loss"])

    again = subprocess.run(cmd(out, "--register"), env=env, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] == killed_at >= 12

    [run], [ref_run] = runs_of(out), runs_of(str(tmp_path / "ref"))
    assert run.info.status == "FINISHED"  # the killed attempt's run, re-attached and finished
    for key in keys:
        want = client.get_metric_history(ref_run.info.run_id, key)
        assert sorted(m.step for m in want) == list(range(40))  # the uninterrupted run: each step once
        ref = {m.step: m.value for m in want}
        rows = client.get_metric_history(run.info.run_id, key)
        first = [(m.step, m.value, m.timestamp) for m in before[key]]
        assert sorted(s for s, _, _ in first) == list(range(last + 1))  # killed attempt: each step once
        resumed = [
            (m.step, m.value, m.timestamp) for m in rows if (m.step, m.value, m.timestamp) not in first
        ]
        assert sorted(s for s, _, _ in resumed) == list(range(killed_at, 40))  # resumed: from its checkpoint
        assert sorted(first + resumed) == sorted((m.step, m.value, m.timestamp) for m in rows)
        # Every step is in the run, and every value logged, before the kill or after it, is the uninterrupted
        # run's value at that step. The steps the killed attempt logged after its newest checkpoint are
        # logged again by the resumed one: MLflow keeps one row per (key, timestamp, step, value), so they
        # are in the run twice (same value, later timestamp), not once.
        assert sorted(m.step for m in rows) == sorted([*range(40), *range(killed_at, last + 1)]), key
        assert [(m.step, m.value) for m in rows] == [(m.step, ref[m.step]) for m in rows], key

    want = load_file(Path(tmp_path / "ref" / "model.safetensors"))
    got = load_file(storage.stage_folder(out, str(tmp_path / "st2")) / "model.safetensors")
    assert not _same_weights(got, want)
    assert set(summary["checkpoints"]) >= {"8", "36"}  # marked step kept beside the newest

    versions = {v.version: v for v in client.search_model_versions("name = 'cpt-sigkill'")}
    assert len(versions) == 2  # the final model and the marked checkpoint at step 8
    tags = [v.tags for v in versions.values()]
    final = next(t for t in tags if t["finmerge.role"] == "cpt")
    assert final["finmerge.base_digest"] == storage.read_manifest(str(base))["digest"]
    assert {
        "finmerge.tokens_digest",
        "finmerge.corpus_digest",
        "finmerge.config_hash",
        "finmerge.code_version",
    } <= set(final)
    assert any(t.get("finmerge.checkpoint_step") == "8" for t in tags)


@pytest.mark.slow
def test_two_process_ddp_job_saves_one_complete_model(base, tokens, tmp_path):
    """pretrain.launch.processes=2 runs a torchrun child job (gloo on CPU); the result is one HF folder
    equal (up to float rounding) to one process training on the same global batches."""
    st = str(tmp_path / "st")
    two = PretrainConfig(**EXACT, max_steps=6, launch={"processes": 2}, checkpoint_every=3)
    res = pretrain(str(base), tokens["uri"], str(tmp_path / "ddp"), two, st)
    assert res["metrics"]["pretrain/steps"] == 6 and storage.read_manifest(res["uri"]) is not None
    ddp = modelio.load_causal_lm(Path(res["uri"]))
    one = PretrainConfig(**{**EXACT, "batch_size": 8}, max_steps=6)
    single = pretrain(str(base), tokens["uri"], str(tmp_path / "one"), one, st)
    ref = modelio.load_causal_lm(Path(single["uri"]))
    for (name, a), b in zip(ref.state_dict().items(), ddp.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=2e-5), name
    assert res["checkpoints"] == {"3": storage.join(checkpoint_root(res["uri"]), "step-00000003")}


@pytest.mark.slow
def test_flow_retry_resumes_a_killed_training_job_in_the_same_mlflow_run(
    base, tokens, tmp_path, prefect_harness
):
    """A worker of the launched (torchrun) job is SIGKILLed; the job fails, Prefect retries the task, the
    retry resumes from the latest checkpoint and logs into the same MLflow run, every loss value equal to an
    uninterrupted run's."""
    import threading

    import psutil

    from finmerge.config import PipelineConfig
    from flows.pretrain import pretrain_flow

    db = tmp_path / "mlflow.db"
    cfg = PipelineConfig.model_validate(
        {
            "storage": {"uri": str(tmp_path / "store"), "staging_dir": str(tmp_path / "st")},
            "tracking": {"uri": f"sqlite:///{db}", "artifact_location": str(tmp_path / "art")},
            "tokenize": {"seq_len": 16},
            "registry": {"cpt_name": "cpt-retry"},
            "pretrain": {**EXACT, "max_steps": 60, "checkpoint_every": 4, "log_every": 1,
                         "launch": {"processes": 2}},
        }
    )  # fmt: skip
    out = str(tmp_path / "cpt")
    ckpts = CheckpointStore(checkpoint_root(out), str(tmp_path / "st"))
    box: dict = {}
    runner = threading.Thread(
        target=lambda: box.update(res=pretrain_flow(cfg, str(base), tokens["uri"], out, register_cpt=True))
    )
    runner.start()
    t0 = time.monotonic()
    while (ckpts.latest() or 0) < 8:
        assert runner.is_alive() and time.monotonic() - t0 < 180
        time.sleep(0.02)
    workers = [
        p for p in psutil.Process().children(recursive=True) if "pretrain-job" in " ".join(p.cmdline())
    ]
    assert workers, "no training workers found"
    workers[-1].send_signal(signal.SIGKILL)
    killed_at = ckpts.latest()
    runner.join(300)
    res = box["res"]
    assert res["resumed_from"] is not None and res["resumed_from"] >= killed_at >= 8
    assert res["metrics"]["pretrain/steps"] == 60
    assert modelio.load_causal_lm(Path(res["uri"])).config.vocab_size > 0

    client = tracking.client(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`finmerge.stage` = 'pretrain'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    killed, resumed = _killed_and_resumed(history, res["resumed_from"])
    assert [m.step for m in killed] == list(range(len(killed)))  # from step 0, each once, in order
    assert [m.step for m in resumed] == list(range(res["resumed_from"], 60))  # from its checkpoint on
    assert len(killed) >= res["resumed_from"]  # nothing lost in between
    # The steps the killed attempt logged after its newest checkpoint are logged again by the retry: MLflow
    # keeps one row per (key, timestamp, step, value), so they are in the run twice, with the same value.
    again = list(range(res["resumed_from"], len(killed)))
    assert sorted(m.step for m in history) == sorted([*range(60), *again])
    # Every value logged, before the kill or after it, is an uninterrupted run's loss at that step.
    ref = pretrain(str(base), tokens["uri"], str(tmp_path / "ref"), cfg.pretrain, str(tmp_path / "st"))
    want = {h["step"]: h["loss"] for h in json.loads((Path(ref["uri"]) / "history.json").read_text())}
    assert sorted(want) == list(range(60))
    assert [(m.step, m.value) for m in history] == [(m.step, want[m.step]) for m in history]
    assert res["registered"][0]["name"] == "cpt-retry"

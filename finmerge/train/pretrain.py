"""Continual pretraining stage: base model + packed blocks → θ_cpt, one complete HF folder.

The loop lives in ``finmerge/train/loop.py`` (accelerate) and checkpoints in ``finmerge/train/checkpoint.py``. This
module stages inputs, decides where training runs, and writes the output: in this process by default, or as
an ``accelerate launch`` / torchrun child job when ``pretrain.launch`` asks for several processes or an
accelerate config (FSDP, DeepSpeed). The child runs this same function; the parent supervises it and turns
a crash into a retryable error, and the retry resumes from the latest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from finmerge import __version__
from finmerge.config import PretrainConfig
from finmerge.core import storage
from finmerge.core.plots import plot_curves
from finmerge.models import loading as modelio
from finmerge.models.card import model_card
from finmerge.models.mlflow_model import write_mlflow_model
from finmerge.train.checkpoint import CheckpointStore
from finmerge.train.loop import (  # re-exported: the demo builder and tests train through this module
    BlockData,
    LogFn,
    TrainData,
    TrainResult,
    eval_loss,
    lr_at,
    total_steps,
    train_loop,
)

__all__ = ["LogFn", "TrainData", "TrainResult", "eval_loss", "lr_at", "total_steps", "train_loop"]


class TrainingInterrupted(RuntimeError):
    """The training job died (killed, node lost, OOM); a retry resumes from its latest checkpoint."""


def heldout_rows(uri: str, tokenizer, seq_len: int, max_rows: int = 32) -> TrainData | None:
    """Held-out finance text as packed rows, for eval loss / perplexity during training."""
    from finmerge.train.tokenize import pack_documents

    texts = (rec["text"] for rec in storage.iter_jsonl(uri, "text"))
    blocks, _ = pack_documents(texts, tokenizer, seq_len)
    return TrainData(torch.from_numpy(blocks[:max_rows].astype(np.int64))) if len(blocks) else None


def checkpoint_root(out_uri: str) -> str:
    """Checkpoints live beside the output folder, so a retry of the same stage finds them."""
    return storage.normalize(out_uri).rstrip("/") + ".checkpoints"


def check_targets(base_uri, tokens_uri, out_uri, heldout_uri, checkpoint_uri, overwrite: bool) -> None:
    """Before any training: the output may be written (``storage.check_output``) and the checkpoint
    folder holds nothing but finmerge checkpoints (they are resumed from and pruned)."""
    inputs = [u for u in (base_uri, tokens_uri, heldout_uri) if u]
    storage.check_output(out_uri, "pretrain", inputs, overwrite)
    CheckpointStore(checkpoint_uri or checkpoint_root(out_uri), "").check_root(inputs)


def _launched() -> bool:
    return "LOCAL_RANK" in os.environ  # set by accelerate launch and torchrun in every child


@dataclass
class TrainJob:
    """One pretrain run: what ``pretrain`` hands a launched child (as JSON) and what ``train_here`` runs."""

    base_uri: str
    tokens_uri: str
    out_uri: str
    cfg: PretrainConfig
    staging_dir: str
    heldout_uri: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    tracking: dict | None = None
    checkpoint_uri: str | None = None
    overwrite: bool = False

    @property
    def inputs(self) -> list[str]:
        return [u for u in (self.base_uri, self.tokens_uri, self.heldout_uri) if u]

    def check_targets(self) -> None:
        uris = (self.base_uri, self.tokens_uri, self.out_uri, self.heldout_uri, self.checkpoint_uri)
        check_targets(*uris, self.overwrite)

    def to_json(self) -> dict:
        return {**asdict(self), "cfg": self.cfg.model_dump(mode="json")}

    @classmethod
    def from_json(cls, data: dict) -> TrainJob:
        return cls(**{**data, "cfg": PretrainConfig.model_validate(data["cfg"])})


def pretrain(
    base_uri: str,
    tokens_uri: str,
    out_uri: str,
    cfg: PretrainConfig,
    staging_dir: str,
    *,
    heldout_uri: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    on_log: LogFn | None = None,
    tracking: dict | None = None,
    checkpoint_uri: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Continually pretrain the model at ``base_uri`` on the packed blocks at ``tokens_uri``.

    ``tracking`` ({"uri", "run_id"}) lets a child job log to the caller's MLflow run. ``overwrite`` lets
    ``out_uri`` replace something that is not a finmerge pretrain output (never an input).
    """
    job = TrainJob(
        base_uri, tokens_uri, out_uri, cfg, staging_dir, heldout_uri=heldout_uri,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, tracking=tracking,
        checkpoint_uri=checkpoint_uri or checkpoint_root(out_uri), overwrite=overwrite,
    )  # fmt: skip
    job.check_targets()
    if (cfg.launch.processes > 1 or cfg.launch.accelerate_config) and not _launched():
        return launch_job(job, cfg.launch)
    return train_here(job, on_log=on_log)


def launch_cmd(spec: Path, launch) -> list[str]:
    """``accelerate launch`` when an accelerate config is given (FSDP / DeepSpeed), else torchrun (DDP)."""
    target = ["-m", "finmerge.cli", "pretrain-job", str(spec)]
    if launch.accelerate_config:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", launch.accelerate_config]
        if launch.processes > 1:
            cmd += ["--num_processes", str(launch.processes)]
        return cmd + list(launch.extra_args) + target
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launch.processes),
        *launch.extra_args, *target,
    ]  # fmt: skip


def launch_job(job: TrainJob, launch) -> dict:
    """Run training as a child job, stream its output, and read the committed result."""
    Path(job.staging_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=job.staging_dir, delete=False) as fh:
        json.dump(job.to_json(), fh)
        spec = Path(fh.name)
    cmd = launch_cmd(spec, launch)
    print("launching:", " ".join(cmd), flush=True)
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
        code = proc.wait()
    finally:
        spec.unlink(missing_ok=True)
    result = storage.result_of(job.out_uri)
    if code != 0 or result is None:
        store = CheckpointStore(job.checkpoint_uri, job.staging_dir)
        raise TrainingInterrupted(
            f"training job exited with code {code}; latest complete checkpoint: "
            f"{store.latest()} under {job.checkpoint_uri} (a retry resumes from it)"
        )
    return result


def run_job_file(spec: str) -> dict:
    """Entry point of a launched child process (``finmerge pretrain-job SPEC``)."""
    return train_here(TrainJob.from_json(json.loads(Path(spec).read_text())))


class MlflowLogger:
    """The training loop's ``on_log`` for an MLflow run. ``unsent`` / ``resend`` let a checkpoint carry the
    values an unreachable server has not taken yet (see ``finmerge.train.loop``)."""

    def __init__(self, run):
        self.run = run

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.run.metrics(metrics, step=step)

    def unsent(self) -> list[list]:
        return self.run.unsent()

    def resend(self, entries: list[list]) -> None:
        self.run.resend(entries)


def _mlflow_logger(tracking: dict | None) -> LogFn | None:
    if not tracking:
        return None
    from finmerge.core.tracking import Run

    run = Run(tracking["uri"], tracking["run_id"])
    return MlflowLogger(run)


def train_here(job: TrainJob, on_log: LogFn | None = None) -> dict:
    """Train in this process (one rank of a launched job, or the only process)."""
    from finmerge.train.tokenize import load_blocks

    job.check_targets()
    cfg = job.cfg
    base_dir = modelio.stage_model(job.base_uri, job.staging_dir, job.allow_pickle)
    tokenizer = modelio.load_tokenizer(base_dir, job.trust_remote_code)
    model = modelio.load_causal_lm(base_dir, job.trust_remote_code)
    blocks = load_blocks(job.tokens_uri, job.staging_dir)  # its index.json records the block length
    vocab = model.get_input_embeddings().num_embeddings
    if blocks.max_token_id >= vocab:
        raise ValueError(
            f"{job.tokens_uri}: token id {blocks.max_token_id} outside the model's vocabulary ({vocab})"
        )
    eval_data = heldout_rows(job.heldout_uri, tokenizer, blocks.seq_len) if job.heldout_uri else None
    store = (
        CheckpointStore(
            job.checkpoint_uri or checkpoint_root(job.out_uri),
            job.staging_dir,
            cfg.keep_last,
            cfg.keep_steps,
            every=cfg.checkpoint_every,
        )
        if cfg.checkpoint_every
        else None
    )

    def save_hf(folder: Path, state_dict: dict) -> None:  # the cpt folder and each checkpoint
        model.save_pretrained(str(folder), state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        write_mlflow_model(folder)  # an MLflow model in place: registrable and servable by stock MLflow

    result = train_loop(
        model,
        BlockData(blocks),
        cfg,
        eval_data=eval_data,
        on_log=on_log or _mlflow_logger(job.tracking),
        desc="continual pretraining",
        checkpoints=store,
        save_model=save_hf,
    )
    state_dict = result.full_state_dict()  # a collective: every rank takes part
    acc = result.accelerator
    if acc.is_main_process:
        out = write_output(job, result, store, state_dict, save_hf)
    acc.wait_for_everyone()
    return out if acc.is_main_process else {}


def write_output(job: TrainJob, result: TrainResult, store, state_dict, save_hf) -> dict:
    base_uri, tokens_uri, cfg = job.base_uri, job.tokens_uri, job.cfg
    base_digest = (storage.read_manifest(base_uri) or {}).get("digest") or modelio.fingerprint(base_uri)
    tokens_digest = (storage.read_manifest(tokens_uri) or {}).get("digest")
    metrics = {
        "pretrain/final_loss": result.final_loss,
        "pretrain/steps": float(result.steps),
        "pretrain/tokens": float(result.tokens),
        "pretrain/tokens_per_s": _mean_of(result.history, "tokens_per_s"),
        "pretrain/seconds": result.seconds,
    }
    if (m := _mean_of(result.history, "mfu")) == m:
        metrics["pretrain/mfu"] = m
    evals = [h["eval_ppl"] for h in result.history if "eval_ppl" in h]
    if evals:
        metrics["pretrain/heldout_ppl_start"] = evals[0]
        metrics["pretrain/heldout_ppl_end"] = evals[-1]
    kept = store.steps() if store else []
    meta = {
        "metrics": metrics,
        "artifacts": ["loss.png", "history.json", "README.md"],
        "resumed_from": result.resumed_from,
        "checkpoints": {str(s): store.uri(s) for s in kept} if store else {},
        "marked_checkpoints": {str(s): store.uri(s) for s in kept if s in cfg.keep_steps} if store else {},
        "lineage": {
            "base": storage.normalize(base_uri),
            "base_digest": base_digest,
            "tokens": storage.normalize(tokens_uri),
            "tokens_digest": tokens_digest,
        },
    }
    with storage.output_folder(
        job.out_uri, job.staging_dir, meta=meta, stage="pretrain", inputs=job.inputs, overwrite=job.overwrite
    ) as out:
        save_hf(out.path, state_dict)
        (out.path / "history.json").write_text(json.dumps(result.history, indent=1))
        plot_curves(
            result.history, ["loss", "eval_loss"], out.path / "loss.png", title="Continual pretraining loss"
        )
        (out.path / "README.md").write_text(
            model_card(
                "finmerge continual-pretrained model (θ_cpt)",
                {
                    "base model": storage.normalize(base_uri),
                    "base digest": base_digest,
                    "corpus tokens": storage.normalize(tokens_uri),
                    "tokens digest": tokens_digest,
                    "steps": result.steps,
                    "tokens seen": result.tokens,
                    "final loss": f"{result.final_loss:.4f}",
                    "held-out ppl": f"{evals[0]:.2f} → {evals[-1]:.2f}" if evals else "–",
                    "schedule": f"{cfg.schedule}, lr {cfg.lr}, warmup {cfg.warmup_steps}",
                    "batch": f"{cfg.batch_size} × accum {cfg.grad_accum} × seq {result.seq_len}"
                    f" × {result.accelerator.num_processes} processes",
                    "precision": result.accelerator.mixed_precision,
                    "resumed from step": result.resumed_from if result.resumed_from is not None else "–",
                    "finmerge": __version__,
                },
                "Domain vector τ_fin = θ_cpt − θ_base. Weights in safetensors. Loss curve: `loss.png`.",
            )
        )
    return out.result()


def _mean_of(history: list[dict], key: str) -> float:
    values = [h[key] for h in history if isinstance(h.get(key), int | float)]
    return float(np.mean(values)) if values else float("nan")

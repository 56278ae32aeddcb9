"""Resumable training checkpoints on any fsspec URI, with no pickle anywhere.

A checkpoint is a folder ``<root>/step-00000100`` committed through ``storage.output_folder`` (temp then
rename, or a verified upload with the manifest written last), so a crash mid-save leaves an incomplete
folder that :meth:`CheckpointStore.latest` ignores. It holds:

* ``config.json`` + ``model.safetensors`` (+ tokenizer): a complete HF folder, so a marked checkpoint can be
  registered or evaluated like any model;
* ``optimizer.safetensors`` + ``optimizer.json``: the full (gathered) optimizer state keyed by parameter
  name, through ``torch.distributed.checkpoint.state_dict``, which also handles DDP and FSDP;
* ``rng.safetensors``: every rank's torch CPU (and CUDA) generator state;
* ``trainer_state.json``: step, data position (epoch, cursor), tokens, the scheduler's state and the
  metric history.

Weights and optimizer tensors are read back with safetensors, so loading a checkpoint can never run code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from finmerge.core import storage

STEP_DIR = re.compile(r"^step-(\d{8})$")
STAGE = "checkpoint"  # the stage its manifests name: only such folders are resumed from or pruned


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _options_loose():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # save_pretrained leaves tied copies (lm_head = embeddings) out; they come back through the tie.
    return StateDictOptions(full_state_dict=True, cpu_offload=True, strict=False)


def _check_only_tied_missing(model, tensors: dict, missing: list[str], where: str) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in tensors if k in params}
    bad = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]
    if bad:
        raise ValueError(f"{where}: checkpoint lacks tensors {bad[:5]}{' …' if len(bad) > 5 else ''}")


def flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict (keyed by parameter name) into tensors and a JSON remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, slots in osd.get("state", {}).items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{fqn}::{slot}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(fqn, {})[slot] = value
    return tensors, {"param_groups": osd.get("param_groups", []), "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        fqn, slot = key.rsplit("::", 1)
        state.setdefault(fqn, {})[slot] = value
    for fqn, slots in meta.get("scalars", {}).items():
        state.setdefault(fqn, {}).update(slots)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointStore:
    """The checkpoints of one training run under ``root`` (local folder or ``s3://`` prefix)."""

    def __init__(
        self,
        root: str,
        staging_dir: str,
        keep_last: int = 2,
        keep_steps: list[int] | None = None,
        every: int | None = None,
    ):
        self.root = storage.normalize(root)
        self.staging_dir = staging_dir
        self.keep_last = max(1, keep_last)
        self.keep_steps = set(keep_steps or [])
        self.every = every  # the training loop saves every N optimizer steps (and at keep_steps)

    def uri(self, step: int) -> str:
        return storage.join(self.root, step_name(step))

    def steps(self) -> list[int]:
        """Steps with a complete checkpoint (manifest present), ascending."""
        fs, path = storage.filesystem(self.root)
        fs.invalidate_cache(path)  # s3fs caches listings; another process may have saved or pruned
        if not fs.exists(path):
            return []
        found = []
        for entry in fs.ls(path, detail=False):
            m = STEP_DIR.match(entry.rstrip("/").rsplit("/", 1)[-1])
            if m and _is_checkpoint(storage.read_manifest(self.uri(int(m.group(1))))):
                found.append(int(m.group(1)))
        return sorted(found)

    def check_root(self, inputs: list[str]) -> None:
        """Refuse a checkpoint folder that overlaps an input or holds anything but finmerge checkpoints
        (complete, or half-written ones a crash left): they are resumed from and pruned."""
        storage.check_output(self.root, "checkpoints", inputs, overwrite=True)  # overlap rules only
        fs, path = storage.filesystem(self.root)
        fs.invalidate_cache(path)
        if not fs.exists(path):
            return
        if not fs.isdir(path):
            raise storage.OutputRefused(f"{self.root}: the checkpoint folder is a file")
        foreign = []
        for entry in fs.ls(path, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(".partial-"):
                continue  # our own temp folder from an interrupted save (removed by the next one)
            m = STEP_DIR.match(name)
            manifest = storage.read_manifest(self.uri(int(m.group(1)))) if m else None
            if m and (manifest is None or _is_checkpoint(manifest)):
                continue  # a checkpoint, or one a crash left half-written (ignored on resume)
            foreign.append(name)
        if foreign:
            raise storage.OutputRefused(
                f"{self.root}: refusing to use it as the checkpoint folder: it holds {len(foreign)} entr"
                f"{'y' if len(foreign) == 1 else 'ies'} that are not finmerge checkpoints "
                f"({', '.join(sorted(foreign)[:3])}). Move them, or choose another output folder"
            )

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(
        self,
        step: int,
        accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        trainer_state: dict,
        write_model: Callable[[Path, dict[str, torch.Tensor]], None],
    ) -> str | None:
        """Gather full states on every rank (collective), then the main process commits the folder."""
        from accelerate.utils import gather_object
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        model_sd = get_model_state_dict(model, options=_options())
        optim_sd = get_optimizer_state_dict(model, _inner(optimizer), options=_options())
        rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
        uri = self.uri(step)
        if accelerator.is_main_process:
            tensors, optim_meta = flatten_optimizer(optim_sd)
            meta = {"step": step, "kind": "checkpoint"}
            # overwrite: check_root vouched for the folder; a step folder a crash left half-written is ours
            with storage.output_folder(uri, self.staging_dir, meta=meta, stage=STAGE, overwrite=True) as out:
                write_model(out.path, model_sd)
                save_file(tensors, str(out.path / "optimizer.safetensors"))
                (out.path / "optimizer.json").write_text(json.dumps(optim_meta, indent=1))
                save_file(
                    {f"rank{r}.{k}": v for r, s in enumerate(rngs) for k, v in s.items()},
                    str(out.path / "rng.safetensors"),
                )
                (out.path / "trainer_state.json").write_text(
                    json.dumps({**trainer_state, "world_size": accelerator.num_processes}, indent=1)
                )
            self.prune()
        accelerator.wait_for_everyone()
        return uri if accelerator.is_main_process else None

    def load(self, step: int, accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Restore model, optimizer and this rank's RNG; returns the trainer state to continue from."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        folder = storage.stage_folder(self.uri(step), self.staging_dir)
        state = json.loads((folder / "trainer_state.json").read_text())
        if state.get("world_size", 1) != accelerator.num_processes:
            # The data order is global, so a different world size is fine; RNG streams are per rank.
            accelerator.print(
                f"resuming a {state.get('world_size')}-process checkpoint with {accelerator.num_processes}"
            )
        tensors = _model_tensors(folder)
        result = set_model_state_dict(model, tensors, options=_options_loose())
        _check_only_tied_missing(model, tensors, result.missing_keys, self.uri(step))
        osd = unflatten_optimizer(
            load_file(str(folder / "optimizer.safetensors")),
            json.loads((folder / "optimizer.json").read_text()),
        )
        set_optimizer_state_dict(model, _inner(optimizer), osd, options=_options())
        rng = load_file(str(folder / "rng.safetensors"))
        mine = {
            k.split(".", 1)[1]: v for k, v in rng.items() if k.startswith(f"rank{accelerator.process_index}.")
        }
        if mine:
            set_rng_state(mine)
        return state

    def prune(self) -> list[int]:
        """Delete all but the newest ``keep_last`` checkpoints (steps in ``keep_steps`` are never deleted)."""
        steps = self.steps()
        doomed = [s for s in steps[: -self.keep_last] if s not in self.keep_steps]
        fs, _ = storage.filesystem(self.root)
        for s in doomed:
            _, path = storage.filesystem(self.uri(s))
            # Manifest first: a half-deleted folder must read as incomplete, never as a checkpoint.
            storage.remove(storage.join(self.uri(s), storage.MANIFEST))
            fs.rm(path, recursive=True)
        return doomed


def _is_checkpoint(manifest: dict | None) -> bool:
    return manifest is not None and storage.stage_of(manifest) == STAGE


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _model_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from finmerge.models.loading import weight_files

    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        tensors.update(load_file(str(f)))
    return tensors

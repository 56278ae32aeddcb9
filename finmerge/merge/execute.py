"""Merge the instruction vector and the domain vector into the base model (method.md §1-5), streaming.

    task_arithmetic:  θ = θ_base + α·(θ_inst − θ_base) + β·(θ_cpt − θ_base)
    linear:           θ = (α·θ_inst + β·θ_cpt) / (α + β)          (weighted average; θ_base is not used)
    ties, dare_ties, dare_linear, slerp: see :mod:`finmerge.merge.method_registry`

The steps: stage and check the three inputs (:mod:`finmerge.merge.triplet`), resolve the config into a typed
per-tensor plan (:mod:`finmerge.merge.plan`), stream the plan into output shards
(:mod:`finmerge.merge.stream`), then write the other model files (:mod:`finmerge.merge.model_files`), the
report, the recipe and the model card (:mod:`finmerge.merge.card`).

Linear methods are evaluated as one weighted sum ``Σ c_k·θ_k`` over the three inputs (task arithmetic:
``c = (1−α−β, α, β)``), upcast to float32, terms with ``c_k = 0`` left out, and rounded once to the output dtype.
That keeps the degenerate settings exact: (0,0) gives θ_base, (1,0) θ_inst, (0,1) θ_cpt bit for bit whenever the
output dtype is the input dtype (the difference form ``θ_base + (θ_inst − θ_base)`` would not be, in fp32).

Peak memory is a few row blocks (``block_elems``), independent of model and tensor size. Shards
hold at most ``cfg.shard_size_mb`` × 10^6 bytes of tensor data (a larger tensor gets a shard of its own, so
``0`` means one tensor per shard); one shard is written as ``model.safetensors`` without an index.

Non-float tensors are copied from the instruct model after checking that all three inputs hold the same
values; ``cfg.exclude`` regexes (``re.search`` on the tensor name) take tensors from the domain model, cast
to the output dtype (bit-exact when the dtypes agree). Vocab policy: see :mod:`finmerge.merge.triplet`.

Output folder: a complete Hugging Face model (config, shards [+ index], tokenizer, chat template, generation
config) plus ``README.md`` (model card), ``merge_recipe.yaml`` (reproduces the merge) and ``merge_report.json``
(per-tensor max |Δ| against the domain and instruct models, vocab row provenance, warnings).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import math
import re
import time
from pathlib import Path

import finmerge
from finmerge.config import MergeConfig
from finmerge.core import storage
from finmerge.core.hash_cache import HashCache
from finmerge.merge import fused
from finmerge.merge.card import model_card, recipe_yaml
from finmerge.merge.decision_memory import DecisionMemory, model_identity
from finmerge.merge.method_registry import METHODS, ROLES, GeneralizedTaskArithmetic, method_summary
from finmerge.merge.model_files import check_tokenizer_source, write_model_files
from finmerge.merge.plan import build_plan, compute_dtype, resolve_dtype
from finmerge.merge.stream import MergeError, dtype_name, kernels_worth_it, merge_pass_many
from finmerge.merge.triplet import load_triplet, stage_triplet
from finmerge.models.shard_writer import ShardedWriter

__all__ = ["MergeError", "merge_from_recipe", "merge_models", "merge_models_many"]
_recipe = recipe_yaml  # the name tests/test_strict_config.py checks the recipe schema through
# the count merge_report.json keeps of each plan kind
KIND_COUNTS = {"merged": "tensors_merged", "copied": "tensors_copied", "taken": "tensors_excluded"}


def _fingerprint_jobs(side, pool: cf.Executor, hashes: HashCache) -> dict:
    """Manifest digest (finmerge folders), else the weight files' sha256: the Hub's name for the blob, one
    remembered from an earlier merge of the same unchanged file, or a background hashing job."""
    manifest_path = side.folder / storage.MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        files = manifest.get("files", {})
        return {
            "manifest_digest": manifest.get("digest"),
            "shards": {f.name: files.get(f.name, {}).get("sha256") for f in side.weights.files},
        }
    return {
        "shards": {
            f.name: hub_blob_sha256(f) or hashes.lookup(f) or pool.submit(hashes.remember, f)
            for f in side.weights.files
        }
    }


_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def hub_blob_sha256(path: Path) -> str | None:
    """The sha256 of a weight file in a Hugging Face cache snapshot, read from where it points: the Hub
    stores each LFS file as ``blobs/<its sha256>``, so a model taken from the cache costs no hashing (a 7B
    model's 14 GB would take about 8 s of CPU). None for any other file."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name == "blobs" and _SHA256_NAME.fullmatch(target.name):
        return target.name
    return None


def _identities(tri, fps: dict) -> dict[str, str | None]:
    """Each input model's identity for the decision memory (:func:`decision_memory.model_identity`)."""
    return {s.role: model_identity(fps.get(s.role), s.weights.files) for s in tri.sides()}


def _resolve_fingerprint(fp: dict) -> dict:
    return {
        **fp,
        "shards": {k: (v.result() if isinstance(v, cf.Future) else v) for k, v in fp["shards"].items()},
    }


def merge_models(
    base_uri: str,
    instruct_uri: str,
    domain_uri: str,
    out_uri: str,
    cfg: MergeConfig,
    staging_dir: str,
    trust_remote_code: bool = False,
    *,
    allow_pickle: bool = False,
    block_elems: int = 1 << 21,
    overwrite: bool = False,
) -> dict:
    """Merge ``instruct`` and ``domain`` (CPT) into ``base`` per ``cfg``; write an HF model folder at ``out_uri``.

    Extra keyword arguments (not in :class:`MergeConfig`): ``allow_pickle`` (``models.allow_pickle``) converts
    pickle-only inputs to safetensors in staging with ``torch.load(weights_only=True)`` instead of refusing
    them; ``block_elems`` is the row-block size of the streaming pass (elements per input block: with 2M
    rather than 1M, the per-block costs of mapping, dispatching the kernel and writing took a 0.37B
    task_arithmetic pass from 1.18 to 1.06 s; larger blocks gained nothing more); ``overwrite``
    lets ``out_uri`` replace something that is not a finmerge merge output (never an input: see
    ``storage.check_output``). The inputs may store float tensors in different formats (bf16, fp16, fp32):
    each is upcast exactly, and ``cfg.dtype`` names the output's.
    """
    return merge_models_many(
        base_uri,
        instruct_uri,
        domain_uri,
        [(out_uri, cfg)],
        staging_dir,
        trust_remote_code,
        allow_pickle=allow_pickle,
        block_elems=block_elems,
        overwrite=overwrite,
    )[0]


def merge_models_many(
    base_uri: str,
    instruct_uri: str,
    domain_uri: str,
    jobs: list[tuple[str, MergeConfig]],
    staging_dir: str,
    trust_remote_code: bool = False,
    *,
    allow_pickle: bool = False,
    block_elems: int = 1 << 21,
    overwrite: bool = False,
) -> list[dict]:
    """K merges of the same three models in one read of the inputs: ``jobs`` is ``[(out_uri, cfg), ...]``;
    each output is exactly what :func:`merge_models` writes for it (a sweep's candidates). The configs may
    differ in method and coefficients, not in what they do to each tensor's kind or dtype (rules, exclude,
    dtype): those would not share a pass."""
    t0 = time.perf_counter()
    inputs = (base_uri, instruct_uri, domain_uri)
    if len({storage.normalize(u) for u, _ in jobs}) != len(jobs):
        raise MergeError("merge: two candidates write the same output")
    for out_uri, cfg in jobs:
        storage.check_output(out_uri, "merge", inputs, overwrite)
        METHODS[cfg.method].coefficients(cfg)  # a linear merge with α + β = 0 fails here, before any work
    uris = dict(zip(ROLES, inputs, strict=True))
    folders = stage_triplet(uris, staging_dir, allow_pickle)
    tri = load_triplet(
        uris,
        folders,
        policy="merge",
        trust_remote_code=trust_remote_code,
    )
    check_tokenizer_source(tri.domain.folder, domain_uri, trust_remote_code)
    plans = [build_plan(tri, cfg, resolve_dtype(cfg.dtype, tri.instruct.config)) for _, cfg in jobs]
    _check_shared_pass(plans)
    specs = [(p.name, p.dtype, p.shape) for p in plans[0].values()]
    calc_dtype = compute_dtype(tri)

    pool = cf.ThreadPoolExecutor(max_workers=2)
    try:
        # cfg.hash_inputs: the sha256 of input shards without a manifest, for the cards that ask for them
        hashed = any(cfg.hash_inputs for _, cfg in jobs)
        hashes = HashCache(staging_dir)
        fps = {s.role: _fingerprint_jobs(s, pool, hashes) for s in tri.sides()} if hashed else {}
        # ties' and dare's decisions, remembered by the digests of the models a task vector joins: known now
        # for models hashed before (a retrain's base and instruct), learnt beside the pass for the others.
        # Only their kernels use it: other merges read and write no memory.
        memory = (
            DecisionMemory(staging_dir, _identities(tri, fps))
            if hashed and _kernels_needed(plans)[1]
            else None
        )
        with contextlib.ExitStack() as stack:
            outs = [
                stack.enter_context(
                    storage.output_folder(
                        u,
                        staging_dir,
                        meta={"kind": "merge"},
                        stage="merge",
                        inputs=inputs,
                        overwrite=overwrite,
                    )
                )
                for u, _ in jobs
            ]
            writers = []
            for out, (_, cfg) in zip(outs, jobs, strict=True):
                shard_bytes = max(0, cfg.shard_size_mb) * 1_000_000
                writers.append(
                    ShardedWriter(out.path, specs, shard_bytes, background=True, direct=cfg.direct_writes)
                )
                stack.callback(writers[-1].abort)
            paths: dict = {}
            t_load = time.perf_counter()
            _load_kernels(plans)
            load_s = time.perf_counter() - t_load
            t_pass = time.perf_counter()
            reports = merge_pass_many(tri, plans, writers, calc_dtype, block_elems, paths, memory)
            shard_shas = [w.close() for w in writers]
            pass_s = time.perf_counter() - t_pass
            fingerprints = {r: _resolve_fingerprint(fp) for r, fp in fps.items()}
            if memory is not None:
                memory.save(_identities(tri, fingerprints))
            seconds = time.perf_counter() - t0
            for out, (out_uri, cfg), plan, report, shard_sha in zip(
                outs, jobs, plans, reports, shard_shas, strict=True
            ):
                out.known_sha256.update(shard_sha)  # hashed while writing: no second read of the shards
                _finish_output(out, out_uri, cfg, tri, uris, plan, report, shard_sha,
                               fingerprints if cfg.hash_inputs else {}, seconds, trust_remote_code,
                               calc_dtype)  # fmt: skip
                out.meta["metrics"]["merge/fused_share"] = paths["fused_elements"] / max(
                    1, paths["fused_elements"] + paths["torch_elements"]
                )
                out.meta["metrics"]["merge/candidates_in_pass"] = float(len(jobs))
                # task vectors whose ties / dare decisions an earlier merge made (see decision_memory)
                out.meta["metrics"]["merge/decisions_remembered"] = float(memory.hits if memory else 0)
                out.meta["metrics"]["merge/pass_seconds"] = pass_s  # reading, merging, writing the shards
                out.meta["metrics"]["merge/kernel_load_seconds"] = load_s  # numba's start, before the pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [out.result() for out in outs]


def _kernels_needed(plans: list[dict]) -> tuple[bool, bool]:
    """(the pass takes the numba kernels, ties / dare's among them); neither for models small enough for
    torch."""
    merged = [p for plan in plans for p in plan.values() if p.kind == "merged"]
    kernels = bool(merged) and kernels_worth_it(plans[0])
    return kernels, kernels and any(isinstance(p.method, GeneralizedTaskArithmetic) for p in merged)


def _load_kernels(plans: list[dict]) -> None:
    """The numba kernels the pass will use, loaded before it."""
    kernels, ties = _kernels_needed(plans)
    if kernels:
        fused.load(ties=ties)


def _check_shared_pass(plans: list[dict]) -> None:
    first = plans[0]
    for other in plans[1:]:
        for name, p in first.items():
            q = other[name]
            if (q.kind, q.dtype, q.source) != (p.kind, p.dtype, p.source):
                raise MergeError(
                    f"merge: candidates differ in how tensor {name} is made ({p.kind}/{dtype_name(p.dtype)} vs "
                    f"{q.kind}/{dtype_name(q.dtype)}): merge them separately"
                )


def _finish_output(
    out,
    out_uri,
    cfg,
    tri,
    uris,
    plans,
    report,
    shard_sha,
    fingerprints,
    seconds,
    trust_remote_code,
    calc_dtype,
) -> None:
    """The model files, report, recipe, card and manifest metadata of one merged output."""
    coeffs = METHODS[cfg.method].coefficients(cfg)
    out_dtype = resolve_dtype(cfg.dtype, tri.instruct.config)
    warnings = list(tri.warnings)
    warnings += write_model_files(tri, out.path, out_dtype, trust_remote_code)
    counts = _counts(plans, report, tri, shard_sha)
    max_cpt = max((t["max_abs_delta_vs_cpt"] for t in report), default=0.0)
    max_inst = max(
        (t["max_abs_delta_vs_inst"] for t in report if t["max_abs_delta_vs_inst"] is not None),
        default=0.0,
    )
    summary = {
        "finmerge_version": finmerge.__version__,
        "method": cfg.method,
        "alpha": cfg.alpha,
        "beta": cfg.beta,
        "coefficients": dict(zip(ROLES, coeffs, strict=True)) if coeffs else None,
        "parameters": method_summary(cfg),
        "compute_dtype": dtype_name(calc_dtype),
        "output_dtype": dtype_name(out_dtype),
        "inputs": {r: _input_summary(tri, r, uris[r], fingerprints) for r in ROLES},
        "vocab": tri.vocab,
        "exclude": list(cfg.exclude),
        "shards": shard_sha,
        "counts": counts,
        "max_abs_delta_vs_cpt": max_cpt,
        "max_abs_delta_vs_inst": max_inst,
        # no timing here: the folder's digest must depend on its content only (the time is in
        # the manifest's metrics, which the digest does not cover)
        "warnings": warnings,
    }
    (out.path / "merge_report.json").write_text(
        json.dumps({"summary": summary, "tensors": report}, indent=2, ensure_ascii=False) + "\n"
    )
    (out.path / "merge_recipe.yaml").write_text(recipe_yaml(cfg, uris, summary), encoding="utf-8")
    (out.path / "README.md").write_text(model_card(cfg, summary), encoding="utf-8")
    out.meta["counts"] = counts
    out.meta["metrics"] = {
        "merge/max_abs_delta_vs_cpt": float(max_cpt),
        "merge/max_abs_delta_vs_inst": float(max_inst),
        "merge/n_tensors": float(len(plans)),
        "merge/seconds": float(seconds),
    }
    out.meta["artifacts"] = ["README.md", "merge_recipe.yaml", "merge_report.json"]
    out.meta["output_dtype"] = dtype_name(out_dtype)
    out.meta["vocab"] = tri.vocab


def _counts(plans: dict, report: list[dict], tri, shard_sha: dict) -> dict:
    kinds = [p.kind for p in plans.values()]
    return {
        **{key: kinds.count(kind) for kind, key in KIND_COUNTS.items()},
        "tensors_vocab_extended": sum(1 for t in report if t["rows_domain_only"]),
        "rows_domain_only": int(tri.vocab["rows_domain_only"]),
        "shards": len(shard_sha),
        "parameters": sum(math.prod(p.shape) for p in plans.values()),
    }


def _input_summary(tri, role: str, uri: str, fingerprints: dict) -> dict:
    side = getattr(tri, role)
    return {
        "uri": storage.normalize(uri),
        "dtype": ",".join(sorted({i.dtype for i in side.weights.tensors.values() if i.is_float})),
        "vocab_size": side.vocab_size,
        **fingerprints.get(role, {}),
    }


def merge_from_recipe(
    recipe_path: str,
    out_uri: str,
    staging_dir: str,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> dict:
    """Run the merge that a ``merge_recipe.yaml`` describes again (read strictly: a typo is an error)."""
    from finmerge.merge.mergekit import load_recipe

    merge_cfg, inp = load_recipe(recipe_path)
    return merge_models(
        inp["base"],
        inp["instruct"],
        inp["domain"],
        out_uri,
        merge_cfg,
        staging_dir,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )

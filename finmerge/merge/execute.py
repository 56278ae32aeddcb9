"""Merge the instruction vector and the domain vector into the base model (method.md §1-5), streaming.

    task_arithmetic:  θ = θ_base + α·(θ_inst − θ_base) + β·(θ_cpt − θ_base)
    linear:           θ = (α·θ_inst + β·θ_cpt) / (α + β)          (weighted average; θ_base is not used)

Both are evaluated as one weighted sum ``Σ c_k·θ_k`` over the three inputs (task arithmetic:
``c = (1−α−β, α, β)``), upcast to float32, terms with ``c_k = 0`` left out, and rounded once to the output dtype.
That keeps the degenerate settings exact: (0,0) gives θ_base, (1,0) θ_inst, (0,1) θ_cpt bit for bit whenever the
output dtype is the input dtype (the difference form ``θ_base + (θ_inst − θ_base)`` would not be, in fp32).

Tensors are read in row blocks from the memory-mapped safetensors inputs and streamed into planned output
shards, so peak memory is a few row blocks (``block_elems``), independent of model and tensor size. Shards
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
import fnmatch
import json
import math
import re
import shutil
import time
from pathlib import Path

import torch
import yaml

import finmerge
from finmerge.config import MergeConfig, TensorRule
from finmerge.core import storage
from finmerge.merge import methods as merge_methods
from finmerge.merge.triplet import PreflightError, Triplet, load_triplet, stage_triplet
from finmerge.models.safetensors_stream import NAME_TO_TORCH, ShardedWriter, row_blocks

ROLES = ("base", "instruct", "domain")

# Tokenizer files taken from the domain model (it may extend the vocab); chat templates come from instruct.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZER_PATTERNS = ("*.tiktoken", "tokenizer*.model", "tokenization_*.py")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def coefficients(
    method: str, alpha: float, beta: float, lambda_scale: float = 1.0, normalize: bool | None = None
) -> tuple[float, float, float]:
    """Weights ``(c_base, c_inst, c_domain)`` of the weighted sum that implements a linear method:
    task_arithmetic = base + λ·(α·τ_inst + β·τ_fin) [/ (α+β) with normalize]; linear = (α·θ_inst + β·θ_cpt)/(α+β).
    """
    a, b = float(alpha), float(beta)
    if method == "task_arithmetic":
        scale = lambda_scale / ((a + b) if normalize and abs(a + b) >= 1e-8 else 1.0)
        return 1.0 - scale * (a + b), scale * a, scale * b
    if method == "linear":
        if a + b == 0:
            raise ValueError("linear merge: alpha + beta must not be 0")
        return 0.0, a / (a + b), b / (a + b)
    raise ValueError(f"{method!r} is not a linear merge method")


def resolve_dtype(requested: str, instruct_config: dict) -> torch.dtype:
    """``auto`` = the instruct model's ``dtype``/``torch_dtype`` (float32 when absent or not a float dtype)."""
    if requested != "auto":
        return NAME_TO_TORCH[requested]
    for key in ("dtype", "torch_dtype"):
        val = instruct_config.get(key) or (instruct_config.get("text_config") or {}).get(key)
        if isinstance(val, str) and val.replace("torch.", "") in NAME_TO_TORCH:
            return NAME_TO_TORCH[val.replace("torch.", "")]
    return torch.float32


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _fingerprint_jobs(side, pool: cf.Executor) -> dict:
    """Manifest digest (finmerge folders) or background sha256 jobs of the weight files."""
    manifest_path = side.folder / storage.MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        files = manifest.get("files", {})
        return {
            "manifest_digest": manifest.get("digest"),
            "shards": {f.name: files.get(f.name, {}).get("sha256") for f in side.weights.files},
        }
    return {"shards": {f.name: pool.submit(storage.sha256_file, f) for f in side.weights.files}}


def _resolve_fingerprint(fp: dict) -> dict:
    return {
        **fp,
        "shards": {k: (v.result() if isinstance(v, cf.Future) else v) for k, v in fp["shards"].items()},
    }


class MergeError(ValueError):
    """A problem found while merging (non-finite values, integer tensors that differ); nothing is committed."""


def _check_finite(t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise MergeError(f"{what}: {n_nan} NaN and {n_inf} Inf value(s)")


def _max_abs(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> float:
    """max |x − y| (NaN when either holds a NaN, or both an Inf), using ``out`` as scratch."""
    if x.numel() == 0:
        return 0.0
    torch.sub(x, y, out=out)
    return float(out.abs_().max())


def _diagnose(name: str, a, b, xf: dict, yf: torch.Tensor, models: dict) -> None:
    rows = "" if a is None else f" (rows {a}:{b})"
    for r, v in xf.items():
        _check_finite(v, f"input {r} tensor {name}{rows} in {models[r].tensors[name].file}")
    _check_finite(yf, f"output tensor {name}{rows}")
    raise MergeError(f"tensor {name}{rows}: non-finite |Δ| between finite output and inputs")


def _rule_for(name: str, rules: list, patterns: list) -> TensorRule | None:
    return next((r for r, p in zip(rules, patterns, strict=True) if p.search(name)), None)


def _plan(tri: Triplet, cfg: MergeConfig, out_dtype: torch.dtype) -> tuple[dict[str, dict], list]:
    """Per tensor: merged (with which method and parameters), copied (non-float) or taken from one model."""
    rules = [*cfg.rules, *(TensorRule(pattern=p, source="domain") for p in cfg.exclude)]
    try:
        patterns = [re.compile(r.pattern) for r in rules]
    except re.error as exc:
        raise PreflightError([f"merge.rules / merge.exclude: invalid regex ({exc})"]) from exc
    plans: dict[str, dict] = {}
    specs = []
    for name in tri.names:
        di = tri.info("domain", name)
        ii = tri.info("instruct", name)
        rule = _rule_for(name, rules, patterns)
        plan = {
            "shape": di.shape,
            "shared_rows": tri.vocab_rows.get(name),
            "rule": rule.pattern if rule else None,
        }
        if rule is not None and rule.source != "merge":
            src = tri.info(rule.source, name)
            plan.update(
                kind="taken", source=rule.source, dtype=out_dtype if src.is_float else src.torch_dtype
            )
        elif not ii.is_float:
            plan.update(kind="copied", dtype=ii.torch_dtype)
        else:
            plan.update(kind="merged", dtype=out_dtype, **_method_params(cfg, rule))
        plans[name] = plan
        specs.append((name, plan["dtype"], di.shape))
    return plans, specs


def _method_params(cfg: MergeConfig, rule: TensorRule | None) -> dict:
    """The method and its parameters for one tensor: the config, overridden by a matching rule."""
    over = {k: v for k, v in (rule.model_dump() if rule else {}).items() if v is not None and k in (
        "method", "alpha", "beta", "density", "t")}  # fmt: skip
    method = over.get("method", cfg.method)
    alpha, beta = over.get("alpha", cfg.alpha), over.get("beta", cfg.beta)
    density = over.get("density")
    params = {"method": method, "alpha": alpha, "beta": beta}
    if method in ("task_arithmetic", "linear"):
        params["coeffs"] = coefficients(method, alpha, beta, cfg.lambda_scale, cfg.normalize)
    elif method == "slerp":
        params["t"] = over.get("t", cfg.t)
    else:
        sparsification, consensus, normalize, rescale = merge_methods.METHODS[method]
        params.update(
            density_instruct=density or cfg.density_instruct or cfg.density,
            density_domain=density or cfg.density_domain or cfg.density,
            sparsification=sparsification,
            consensus=consensus,
            normalize=normalize if cfg.normalize is None else cfg.normalize,
            rescale=rescale if cfg.rescale is None else cfg.rescale,
            lambda_scale=cfg.lambda_scale,
            seed=cfg.seed,
        )
    return params


def _combine(name: str, plan: dict, xf: dict, acc: torch.Tensor, scratch) -> torch.Tensor:
    """The merged values of one block (all of the tensor's shared rows for whole-tensor methods)."""
    method = plan["method"]
    if method in ("task_arithmetic", "linear"):
        weights = [(r, c) for r, c in zip(ROLES, plan["coeffs"], strict=True) if c != 0.0]
        if not weights:
            return acc.zero_()
        for j, (r, c) in enumerate(weights):
            if j == 0:
                torch.mul(xf[r], c, out=acc) if c != 1.0 else acc.copy_(xf[r])
            else:
                acc.add_(xf[r], alpha=c)
        return acc
    if method == "slerp":
        return acc.copy_(merge_methods.slerp_tensor(plan["t"], xf["instruct"], xf["domain"]))
    specs = [
        merge_methods.VectorSpec(plan["alpha"], plan["density_instruct"]),
        merge_methods.VectorSpec(plan["beta"], plan["density_domain"]),
    ]
    seeds = [merge_methods.tensor_seed(plan["seed"], name, r) for r in ("instruct", "domain")]
    return merge_methods.generalized_task_arithmetic(
        xf["base"],
        [xf["instruct"], xf["domain"]],
        specs,
        sparsification=plan["sparsification"],
        consensus=plan["consensus"],
        normalize=plan["normalize"],
        rescale=plan["rescale"],
        lambda_scale=plan["lambda_scale"],
        seeds=seeds,
        scratch=scratch,
        out=acc,
    )


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
    allow_float_dtype_mismatch: bool = False,
    block_elems: int = 1 << 20,
    hash_inputs: bool = True,
    overwrite: bool = False,
) -> dict:
    """Merge ``instruct`` and ``domain`` (CPT) into ``base`` per ``cfg``; write an HF model folder at ``out_uri``.

    Extra keyword arguments (not in :class:`MergeConfig`): ``allow_pickle`` (``models.allow_pickle``) converts
    pickle-only inputs to safetensors in staging with ``torch.load(weights_only=True)`` instead of refusing
    them; ``allow_float_dtype_mismatch`` lets inputs store a
    tensor in different float dtypes (all are upcast anyway); ``block_elems`` is the row-block size of the
    streaming pass (elements per input block); ``hash_inputs`` computes the sha256 of input weight files that
    have no finmerge manifest, for the model card (in background threads); ``overwrite`` lets ``out_uri``
    replace something that is not a finmerge merge output (never an input: see ``storage.check_output``).
    """
    t0 = time.perf_counter()
    inputs = (base_uri, instruct_uri, domain_uri)
    storage.check_output(out_uri, "merge", inputs, overwrite)
    coeffs = (
        coefficients(cfg.method, cfg.alpha, cfg.beta, cfg.lambda_scale, cfg.normalize)
        if cfg.method in ("task_arithmetic", "linear")
        else None
    )
    uris = {"base": base_uri, "instruct": instruct_uri, "domain": domain_uri}
    folders = stage_triplet(uris, staging_dir, allow_pickle)
    tri = load_triplet(
        uris,
        folders,
        policy="merge",
        allow_float_dtype_mismatch=allow_float_dtype_mismatch,
        trust_remote_code=trust_remote_code,
    )
    _check_tokenizer_source(tri.domain.folder, domain_uri, trust_remote_code)
    out_dtype = resolve_dtype(cfg.dtype, tri.instruct.config)
    plans, specs = _plan(tri, cfg, out_dtype)
    compute_dtype = torch.float32
    if any(tri.info(r, n).torch_dtype == torch.float64 for r in ROLES for n in tri.names):
        compute_dtype = torch.float64

    pool = cf.ThreadPoolExecutor(max_workers=2)
    try:
        fps = {s.role: _fingerprint_jobs(s, pool) for s in tri.sides()} if hash_inputs else {}
        with storage.output_folder(
            out_uri, staging_dir, meta={"kind": "merge"}, stage="merge", inputs=inputs, overwrite=overwrite
        ) as out:
            writer = ShardedWriter(out.path, specs, max(0, cfg.shard_size_mb) * 1_000_000, background=True)
            try:
                report = _merge_pass(tri, plans, writer, compute_dtype, block_elems)
                shard_sha = writer.close()
                out.known_sha256.update(shard_sha)  # hashed while writing: no second read of the shards
            finally:
                writer.abort()
            fingerprints = {r: _resolve_fingerprint(fp) for r, fp in fps.items()}
            warnings = list(tri.warnings)
            warnings += _write_model_files(tri, out.path, out_dtype, trust_remote_code)
            seconds = time.perf_counter() - t0
            counts = {
                "tensors_merged": sum(p["kind"] == "merged" for p in plans.values()),
                "tensors_copied": sum(p["kind"] == "copied" for p in plans.values()),
                "tensors_excluded": sum(p["kind"] == "taken" for p in plans.values()),
                "tensors_vocab_extended": sum(1 for t in report if t["rows_domain_only"]),
                "rows_domain_only": int(tri.vocab["rows_domain_only"]),
                "shards": len(shard_sha),
                "parameters": sum(int(torch.Size(p["shape"]).numel()) for p in plans.values()),
            }
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
                "parameters": _method_summary(cfg),
                "compute_dtype": _dtype_name(compute_dtype),
                "output_dtype": _dtype_name(out_dtype),
                "inputs": {
                    r: {
                        "uri": storage.normalize(uris[r]),
                        "dtype": _input_dtype(getattr(tri, r)),
                        "vocab_size": getattr(tri, r).vocab_size,
                        **fingerprints.get(r, {}),
                    }
                    for r in ROLES
                },
                "vocab": tri.vocab,
                "exclude": list(cfg.exclude),
                "shards": shard_sha,
                "counts": counts,
                "max_abs_delta_vs_cpt": max_cpt,
                "max_abs_delta_vs_inst": max_inst,
                "seconds": seconds,
                "warnings": warnings,
            }
            (out.path / "merge_report.json").write_text(
                json.dumps({"summary": summary, "tensors": report}, indent=2, ensure_ascii=False) + "\n"
            )
            (out.path / "merge_recipe.yaml").write_text(_recipe(cfg, uris, summary), encoding="utf-8")
            (out.path / "README.md").write_text(_model_card(cfg, summary, out_uri), encoding="utf-8")
            out.meta["counts"] = counts
            out.meta["metrics"] = {
                "merge/max_abs_delta_vs_cpt": float(max_cpt),
                "merge/max_abs_delta_vs_inst": float(max_inst),
                "merge/n_tensors": float(len(plans)),
                "merge/seconds": float(time.perf_counter() - t0),
            }
            out.meta["artifacts"] = ["README.md", "merge_recipe.yaml", "merge_report.json"]
            out.meta["output_dtype"] = _dtype_name(out_dtype)
            out.meta["vocab"] = tri.vocab
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out.result()


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


def _input_dtype(side) -> str:
    dts = sorted({i.dtype for i in side.weights.tensors.values() if i.is_float})
    return ",".join(dts)


def _method_summary(cfg: MergeConfig) -> dict:
    dare = ("density", "density_instruct", "density_domain", "rescale", "normalize", "lambda_scale", "seed")
    keys = {
        "ties": ("density", "density_instruct", "density_domain", "normalize", "lambda_scale"),
        "dare_ties": dare,
        "dare_linear": dare,
        "slerp": ("t",),
        "task_arithmetic": ("lambda_scale", "normalize"),
    }.get(cfg.method, ())
    out = {k: getattr(cfg, k) for k in keys}
    if cfg.rules:
        out["rules"] = [r.model_dump(exclude_none=True) for r in cfg.rules]
    return out


def _read(model, name: str, a, b, ws, key: str) -> torch.Tensor:
    """Rows [a, b) of ``name`` into a reused buffer (whole 0-d / 1-row tensors through safetensors)."""
    info = model.tensors[name]
    dtype = info.torch_dtype
    if a is None or not info.shape or dtype is None or info.offset < 0:
        return model.read(name, a, b)
    return model.read_into(name, a, b, ws.get(key, (b - a, *info.shape[1:]), dtype))


def _uses_base(plan: dict) -> bool:
    if plan["kind"] != "merged" or plan["method"] == "slerp":
        return False
    return plan["method"] not in ("task_arithmetic", "linear") or plan["coeffs"][0] != 0.0


def _blocks(plan: dict, block_elems: int) -> list[tuple[int | None, int | None, bool]]:
    """Row blocks over the rows every model has, then the domain-only rows (vocab extension). Methods that
    sparsify by magnitude or rescale by norm see all shared rows at once."""
    shape, shared = plan["shape"], plan["shared_rows"]
    rows = shape[0] if shape else None
    split = shared if shared is not None else rows
    whole = plan["kind"] == "merged" and plan["method"] in merge_methods.WHOLE_TENSOR
    head = (
        [(0, split, True)]
        if whole and shape
        else [(a, b, True) for a, b in row_blocks(shape, block_elems, 0, split)]
    )
    if shared is not None:
        head += [(a, b, False) for a, b in row_blocks(shape, block_elems, shared, rows)]
    return head


def _merge_pass(tri: Triplet, plans: dict, writer: ShardedWriter, compute_dtype, block_elems: int) -> list:
    models = {r: getattr(tri, r).weights for r in ROLES}
    ws = merge_methods.Scratch()
    k = 0
    report = []
    for m in models.values():
        m.__enter__()
    try:
        for name in writer.order:
            plan = plans[name]
            kind, shape, out_dtype = plan["kind"], plan["shape"], plan["dtype"]
            shared = plan["shared_rows"]
            rows = shape[0] if shape else None
            d_cpt, d_inst = 0.0, None
            for a, b, in_shared in _blocks(plan, block_elems):
                roles = ROLES if in_shared else ("domain",)
                k += 1
                par = k % 2  # buffers the writer may still be writing from alternate between blocks
                # Raw blocks may go to the writer as they are (copied / taken tensors, domain-only rows), so
                # they alternate too; a whole-tensor block is never written raw and gets one buffer set.
                whole = in_shared and kind == "merged" and plan["method"] in merge_methods.WHOLE_TENSOR
                x = {r: _read(models[r], name, a, b, ws, f"raw_{r}{'' if whole else par}") for r in roles}
                if kind == "copied":
                    for r in ("base", "domain"):
                        if not torch.equal(x[r], x["instruct"]):
                            raise MergeError(f"non-float tensor {name} differs between instruct and {r}")
                    writer.write(name, x["instruct"])
                    d_inst = 0.0
                    continue
                bshape = x["domain"].shape
                if whole and plan["method"] != "slerp":
                    # ties / dare on the raw inputs: converted chunk by chunk inside, never as whole fp32 copies
                    acc = _combine(name, plan, x, ws.get(f"acc{par}", bshape, compute_dtype), ws)
                    y = acc if out_dtype == compute_dtype else ws.get(f"y{par}", bshape, out_dtype).copy_(acc)
                    dc = merge_methods.max_abs_diff(acc, x["domain"], ws)
                    di = merge_methods.max_abs_diff(acc, x["instruct"], ws)
                    if not (math.isfinite(dc) and math.isfinite(di)) or not bool(torch.isfinite(acc).all()):
                        _diagnose(name, a, b, {r: v.to(compute_dtype) for r, v in x.items()}, acc, models)
                    d_cpt, d_inst = max(d_cpt, dc), max(d_inst or 0.0, di)
                    writer.write(name, y)
                    del x, y
                    continue
                xf = {
                    r: v if v.dtype == compute_dtype else ws.get(f"x_{r}", v.shape, compute_dtype).copy_(v)
                    for r, v in x.items()
                }
                if kind == "taken" or not in_shared:
                    src = x[plan["source"]] if kind == "taken" and in_shared else x["domain"]
                    y = src if src.dtype == out_dtype else ws.get(f"y{par}", bshape, out_dtype).copy_(src)
                else:
                    acc = _combine(name, plan, xf, ws.get(f"acc{par}", bshape, compute_dtype), ws)
                    y = acc if out_dtype == compute_dtype else ws.get(f"y{par}", bshape, out_dtype).copy_(acc)
                # t0 / t1 are the method's delta buffers, free again once the block is combined
                yf = y if y.dtype == compute_dtype else ws.get("t0", bshape, compute_dtype).copy_(y)
                # Non-finite values in the output or in an input it is compared with show up as a
                # non-finite |Δ|; the base is checked apart (it may take no part in either).
                diff = ws.get("t1", bshape, compute_dtype)
                dc = _max_abs(yf, xf["domain"], diff)
                di = _max_abs(yf, xf["instruct"], diff) if in_shared else 0.0
                idle = [r for r in roles if r == "base" and not _uses_base(plan)]
                if not (math.isfinite(dc) and math.isfinite(di)) or any(
                    not bool(torch.isfinite(xf[r]).all()) for r in idle
                ):
                    _diagnose(name, a, b, xf, yf, models)
                d_cpt = max(d_cpt, dc)
                if in_shared:
                    d_inst = max(d_inst or 0.0, di)
                writer.write(name, y)
                del x, xf, y, yf
            report.append(
                {
                    "name": name,
                    "kind": kind,
                    "method": plan.get("method") if kind == "merged" else plan.get("source"),
                    "rule": plan["rule"],
                    "shape": list(shape),
                    "dtype": _dtype_name(out_dtype),
                    "rows_domain_only": (rows - shared) if shared is not None else 0,
                    "max_abs_delta_vs_cpt": d_cpt,
                    "max_abs_delta_vs_inst": d_inst,
                }
            )
    finally:
        for m in models.values():
            m.__exit__(None, None, None)
    return report


def _check_tokenizer_source(folder: Path, uri: str, trust_remote_code: bool) -> None:
    """The merged model takes the domain model's tokenizer: refuse before any work when it has none that
    transformers can load, rather than write a model nobody can evaluate."""
    vocab_files = {"tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model"}  # fmt: skip
    names = [p.name for p in folder.iterdir()]
    if not any(n in vocab_files or fnmatch.fnmatch(n, "*.tiktoken") for n in names):
        raise MergeError(
            f"{uri}: the domain model has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json …); "
            "the merged model takes its tokenizer from it. Copy the tokenizer of the model it was trained from"
        )
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise MergeError(
            f"{uri}: the domain model's tokenizer does not load ({type(exc).__name__}: {exc})"
        ) from exc


def _copy_matching(src: Path, dst: Path, names, patterns) -> list[str]:
    copied = []
    for p in sorted(src.iterdir()):
        if p.is_file() and (p.name in names or any(fnmatch.fnmatch(p.name, pat) for pat in patterns)):
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    return copied


def _write_model_files(tri: Triplet, out: Path, out_dtype: torch.dtype, trust_remote_code: bool) -> list[str]:
    """config.json, generation config, tokenizer (domain) + chat template (instruct), custom code."""
    warnings: list[str] = []
    inst, dom = tri.instruct.folder, tri.domain.folder

    config = json.loads((inst / "config.json").read_text(encoding="utf-8"))
    target = config["text_config"] if "vocab_size" not in config and "text_config" in config else config
    if tri.vocab["output"] is not None:
        target["vocab_size"] = int(tri.vocab["output"])
    config["dtype"] = _dtype_name(out_dtype)
    if "torch_dtype" in config:
        config["torch_dtype"] = _dtype_name(out_dtype)

    if trust_remote_code and config.get("auto_map"):
        _copy_matching(inst, out, (), ("*.py",))
    _copy_matching(dom, out, TOKENIZER_FILES, TOKENIZER_PATTERNS)
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    if (inst / "generation_config.json").exists():
        shutil.copy2(inst / "generation_config.json", out / "generation_config.json")
    else:
        warnings.append("instruct model has no generation_config.json; none written")

    # Chat template: the instruct model's, never the domain's.
    found = False
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.exists() else None
    if tc is not None:
        tc.pop("chat_template", None)
    inst_tc_path = inst / "tokenizer_config.json"
    if inst_tc_path.exists():
        inst_tc = json.loads(inst_tc_path.read_text(encoding="utf-8"))
        if inst_tc.get("chat_template"):
            found = True
            if tc is None:
                tc = {}
            tc["chat_template"] = inst_tc["chat_template"]
    if tc is not None:
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for fname in CHAT_TEMPLATE_FILES:
        if (inst / fname).exists():
            shutil.copy2(inst / fname, out / fname)
            found = True
    if (inst / "additional_chat_templates").is_dir():
        shutil.copytree(inst / "additional_chat_templates", out / "additional_chat_templates")
        found = True
    if not found:
        warnings.append("instruct model has no chat template; the merged model has none")
    if not (out / "tokenizer_config.json").exists() and not (out / "tokenizer.json").exists():
        warnings.append("domain model has no tokenizer files")
    return warnings


def _recipe(cfg: MergeConfig, uris: dict, summary: dict) -> str:
    recipe = {
        "finmerge_version": finmerge.__version__,
        "inputs": {r: storage.normalize(uris[r]) for r in ROLES},
        "input_digests": {
            r: summary["inputs"][r].get("manifest_digest") or summary["inputs"][r].get("shards")
            for r in ROLES
        },
        "merge": cfg.model_dump(mode="json"),
        "resolved": {
            "output_dtype": summary["output_dtype"],
            "compute_dtype": summary["compute_dtype"],
            "coefficients": summary["coefficients"],
            "vocab": summary["vocab"],
        },
    }
    head = (
        "# finmerge merge recipe. Reproduce with:\n"
        "#   from finmerge.merge.execute import merge_from_recipe\n"
        "#   merge_from_recipe('merge_recipe.yaml', out_uri, staging_dir)\n"
        "# or merge_models(inputs.base, inputs.instruct, inputs.domain, out_uri, MergeConfig(**merge), staging_dir)\n"
    )
    return head + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def _model_card(cfg: MergeConfig, s: dict, out_uri: str) -> str:
    a, b = cfg.alpha, cfg.beta
    formula = {
        "task_arithmetic": f"θ = θ_base + {cfg.lambda_scale:g}·({a:g}·(θ_inst − θ_base) + {b:g}·(θ_cpt − θ_base))"
        + (f" / {a + b:g}" if cfg.normalize else ""),
        "linear": f"θ = ({a:g}·θ_inst + {b:g}·θ_cpt) / {a + b:g}",
        "ties": "θ = θ_base + λ·Σ wᵢ·mᵢ·topk(τᵢ) / Σ wᵢ·mᵢ (mᵢ: sign agrees with the weighted sum)",
        "dare_ties": "θ = θ_base + λ·Σ wᵢ·mᵢ·drop(τᵢ), drop = random keep (density) with L1 rescale, mᵢ: sign agreement",
        "dare_linear": "θ = θ_base + λ·Σ wᵢ·drop(τᵢ), drop = random keep (density) with L1 rescale",
        "slerp": f"θ = slerp(θ_inst, θ_cpt, t={cfg.t:g}) row by row",
    }[cfg.method]
    lines = [
        "---",
        "library_name: transformers",
        "tags: [finmerge, merge, " + cfg.method.replace("_", "-") + "]",
        "---",
        "",
        f"# {Path(storage.normalize(out_uri)).name}",
        "",
        "A finance LLM built by finmerge: the instruction vector of an instruct model and the domain vector of a "
        "continually pretrained (CPT) model, added to their common base model.",
        "",
        "## Recipe",
        "",
        f"- method: `{cfg.method}`, α = {a:g}, β = {b:g}",
        f"- formula: {formula}",
        f"- computed in {s['compute_dtype']}, rounded once to {s['output_dtype']}",
        f"- parameters: {json.dumps(s['parameters'], ensure_ascii=False)}",
        f"- excluded (taken from the domain model unchanged): {', '.join(f'`{e}`' for e in cfg.exclude) or 'none'}",
        f"- tool: finmerge {s['finmerge_version']}; full recipe in `merge_recipe.yaml`",
        "",
        "## Inputs",
        "",
        "| role | URI | dtype | vocab | digest |",
        "|---|---|---|---|---|",
    ]
    for r in ROLES:
        inp = s["inputs"][r]
        if inp.get("manifest_digest"):
            digest = f"manifest {inp['manifest_digest']}"
        else:
            digest = "<br>".join(f"{k}: {v}" for k, v in (inp.get("shards") or {}).items()) or "not computed"
        lines.append(f"| {r} | `{inp['uri']}` | {inp['dtype']} | {inp['vocab_size']} | {digest} |")
    v = s["vocab"]
    lines += [
        "",
        "## Vocab and tokenizer",
        "",
        f"- vocab sizes: base {v['base']}, instruct {v['instruct']}, domain {v['domain']} → output {v['output']}",
        (
            f"- rows [0, {v['shared']}) merged; rows [{v['shared']}, {v['output']}) taken from the domain model "
            f"unchanged ({v['rows_domain_only']} row(s)); no row dropped"
            if v["rows_domain_only"]
            else "- same vocab in all three models: every row merged"
        ),
        "- tokenizer: from the domain model; chat template and generation_config.json: from the instruct model",
        "",
        "## Output",
        "",
        f"- {s['counts']['parameters']:,} parameters in {s['counts']['shards']} shard(s); "
        f"{s['counts']['tensors_merged']} tensors merged, {s['counts']['tensors_copied']} copied (non-float), "
        f"{s['counts']['tensors_excluded']} excluded",
        f"- max |Δ| vs domain: {s['max_abs_delta_vs_cpt']:.4g}; vs instruct: {s['max_abs_delta_vs_inst']:.4g} "
        "(per tensor in `merge_report.json`)",
        "",
        "| shard | sha256 |",
        "|---|---|",
    ]
    lines += [f"| {k} | {h} |" for k, h in s["shards"].items()]
    if s["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in s["warnings"]]
    return "\n".join(lines) + "\n"


# Prefect wrapper: cached on the output folder (content-keyed), retried on I/O errors, tracked in MLflow.

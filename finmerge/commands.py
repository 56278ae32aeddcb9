"""What each ``finmerge`` subcommand does (the parser and the error handling are in :mod:`finmerge.cli`).

Stage subcommands run the stages declared in ``tasks/`` through the same runner as the flows (same output
folder, cache, MLflow run and retry rule) without starting Prefect, and print a one-line JSON summary.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from finmerge.config import ConfigError, PipelineConfig, config_hash, load_config, reference_markdown
from finmerge.core import storage

DEFAULT_CONFIG = Path("configs/demo.yaml")


def _config(args) -> PipelineConfig:
    path = args.config if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    return load_config(path, args.set)


def _print(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, default=str))


def cmd_run(args) -> int:
    cfg = _config(args)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    from flows.pipeline import pipeline

    summary = pipeline(cfg)
    print_summary(summary)
    return 0


def print_summary(s: dict) -> None:
    reg = s["registered"]["merged"]
    alias = next((a for a in ("champion", *reg["aliases"]) if a in reg["aliases"]), reg["version"])
    uri = s["tracking_uri"]
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"open {uri}"
    cached = sum(1 for v in s["stages"].values() if v == "Cached")
    print("\n" + "=" * 78)
    print(
        f"finmerge pipeline — config {s['config_hash']} — {s['seconds']} s — "
        f"{cached}/{len(s['stages'])} stages cached"
    )
    print("=" * 78)
    print(s["table"])
    if s.get("claim"):
        print(f"\n{s['claim']}")
    sweep = s.get("sweep")
    if sweep:
        c = sweep["chosen"]["candidate"]
        print(
            f"sweep      : {len(sweep['candidates'])} candidates on the validation split → α={c['alpha']:g}, "
            f"β={c['beta']:g} ({sweep['reason']}); table and Pareto plot in {sweep['uri']}"
        )
    print()
    print(
        f"registered : {reg['name']} v{reg['version']} (aliases: {', '.join(reg['aliases']) or '-'})"
        f"  →  models:/{reg['name']}@{alias}"
    )
    print(f"             {s['registered']['cpt']['name']} v{s['registered']['cpt']['version']}")
    promo = s.get("promotion")
    if promo:
        checks = promo.get("checks") or []
        passed = sum(1 for c in checks if c["passed"])
        print(
            f"promotion  : {promo['decision']} → champion v{promo['champion']} "
            f"(gates {passed}/{len(checks)} passed; finmerge rollback restores the previous champion)"
        )
    for label, folder in s["models"].items():
        print(f"{label:<11}: {folder}")
    if s.get("vectors"):
        print(f"{'vectors':<11}: {s['vectors']}")
    print(f"MLflow UI  : {ui}")
    print("stages     : " + ", ".join(f"{k}={v}" for k, v in s["stages"].items()))


def cmd_config(args) -> int:
    if args.action == "schema":
        _print(PipelineConfig.model_json_schema())
        return 0
    if args.action == "reference":
        print(reference_markdown(), end="")
        return 0
    cfg = _config(args)
    if args.action == "show":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False))
    print(f"# config hash {config_hash(cfg)}", file=sys.stderr if args.action == "show" else sys.stdout)
    return 0


def _runner(cfg: PipelineConfig):
    """Stage commands run through the same runner as the flows (folder, cache, MLflow run, retries),
    without starting Prefect."""
    from finmerge.runner.stage import LocalRunner, RunContext

    return LocalRunner(RunContext.create(cfg, lazy=True), cfg)


def _stage_summary(res: dict, *keys: str) -> dict:
    return {k: res.get(k) for k in ("uri", "digest", *keys, "cache", "mlflow_run_id")}


def cmd_corpus(args) -> int:
    """One corpus stage; prints a one-line JSON summary of counts."""
    cfg = _config(args)
    runner = _runner(cfg)
    if args.step == "ingest":
        from finmerge.runner.stage import sources_fingerprint
        from tasks.ingest import INGEST, source_listing

        sources = list(args.input or cfg.corpus.ingest.sources)
        listing = source_listing(cfg, sources_fingerprint(sources)) if sources else None
        stage, inputs = INGEST, {"sources": sources, "prev": args.prev, "listing": listing}
    elif args.step == "clean":
        from tasks.clean import CLEAN

        stage, inputs = CLEAN, {"corpus": args.input[0]}
    else:
        from tasks.dedup import DEDUP

        stage, inputs = DEDUP, {"corpus": args.input[0], "prev": args.prev}
    result = runner.run(stage, inputs, out=args.output, overwrite=args.overwrite)
    summary = {"stage": args.step, "output": result["uri"], "digest": result["digest"], **result["counts"]}
    print(json.dumps({**summary, "cache": result.get("cache")}, ensure_ascii=False))
    return 0


def cmd_tokenize(args) -> int:
    from tasks.tokenize import TOKENIZE

    cfg = _config(args)
    inputs = {"corpus": args.corpus, "tokenizer": args.model}
    _print(_runner(cfg).run(TOKENIZE, inputs, out=args.out, overwrite=args.overwrite))
    return 0


def cmd_pretrain(args) -> int:
    from flows.pretrain import run_pretrain

    cfg = _config(args)
    res = run_pretrain(
        cfg,
        args.model,
        args.data,
        args.out,
        heldout_uri=args.heldout,
        register=args.register,
        overwrite=args.overwrite,
    )
    _print(
        {
            k: res.get(k)
            for k in ("uri", "digest", "metrics", "resumed_from", "checkpoints", "registered", "cache")
        }
    )
    return 0


def cmd_pretrain_job(args) -> int:
    from finmerge.train.pretrain import run_job_file

    run_job_file(args.spec)
    return 0


def _merge_inputs(args) -> tuple[PipelineConfig, object, dict]:
    """Config, merge section and input URIs: ``--config`` may be a pipeline config, a finmerge
    ``merge_recipe.yaml`` or a mergekit YAML; explicit flags override what the file says."""
    from finmerge.config import MergeConfig
    from finmerge.merge import mergekit as mergekit_compat

    path = args.config if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    cfg, m, uris = mergekit_compat.load_merge_file(path, args.set)  # strict; --set merge.* applies too
    uris = dict(uris)
    updates = {k: v for k, v in {"method": args.method, "alpha": args.alpha, "beta": args.beta,
               "dtype": args.dtype}.items() if v is not None}  # fmt: skip
    m = MergeConfig.model_validate({**m.model_dump(), **updates})
    for role in ("base", "instruct", "domain"):
        if getattr(args, role):
            uris[role] = getattr(args, role)
    missing = [f"--{r}" for r in ("base", "instruct", "domain") if not uris.get(r)]
    if missing:
        raise ConfigError(f"merge needs {', '.join(missing)} (or a mergekit YAML / recipe naming the models)")
    return cfg, m, uris


def cmd_merge(args) -> int:
    from tasks.merge import MERGE

    cfg, m, uris = _merge_inputs(args)
    cfg = cfg.model_copy(update={"merge": m})
    res = _runner(cfg).run(MERGE, uris, out=args.out, overwrite=args.overwrite)
    _print(_stage_summary(res, "counts", "metrics", "output_dtype") | {"method": m.method})
    return 0


def cmd_sweep(args) -> int:
    """The sweep on the CLI's runner (no Prefect): the same stages, folders and MLflow runs as the pipeline's."""
    from flows.sweep import run_sweep, validation_data

    cfg = _config(args)
    s = cfg.merge.sweep
    given = {"alpha": args.alpha, "beta": args.beta, "harness_data": args.harness, "heldout": args.heldout,
             "chat_questions": args.chat, "general_questions": args.general}  # fmt: skip
    s = type(s).model_validate({**s.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    cfg = cfg.model_copy(update={"merge": cfg.merge.model_copy(update={"sweep": s})})
    triplet = {"base": args.base, "instruct": args.instruct, "domain": args.domain}
    res = run_sweep(_runner(cfg), cfg, triplet, validation_data(cfg))
    c = res["chosen"]
    _print(
        _stage_summary(res, "reason")
        | {
            "chosen": c["candidate"]["label"],
            "chosen_merge": c["merge"],
            "candidates": len(res["candidates"]),
        }
    )
    print(res["markdown"], file=sys.stderr)
    return 0


def cmd_analyze(args) -> int:
    from tasks.analyze import ANALYZE

    cfg = _config(args)
    inputs = {"base": args.base, "instruct": args.instruct, "domain": args.domain}
    _print(_runner(cfg).run(ANALYZE, inputs, out=args.out, overwrite=args.overwrite))
    return 0


def cmd_evaluate(args) -> int:
    from finmerge.evaluate.run import leaderboard_summary
    from tasks.evaluate import EVALUATE

    cfg = _config(args)
    e = cfg.evaluate
    update = {"prompt_version": args.prompt_version, "batch_size": args.batch_size}
    e = e.model_copy(update={k: v for k, v in update.items() if v is not None})
    e = type(e).model_validate(e.model_dump())  # re-validate the overrides
    # --out results.json (lm-eval's --output_path style) keeps the sample files in the folder "results"
    as_file = bool(args.out) and args.out.endswith(".json")
    folder = args.out[: -len(".json")] if as_file else args.out
    if as_file:
        _check_results_file(args.out, folder, args.overwrite)
    cfg = cfg.model_copy(update={"evaluate": e})
    inputs = {
        "model": args.model,
        "harness": list(args.tasks or e.harness_data),
        "heldout": args.heldout or e.heldout,
        "chat": args.chat or e.chat_questions,
        "general": args.general or e.general_questions,
    }
    options = {"label": args.label, "dtype": args.dtype, "device": args.device}
    result = _runner(cfg).run(
        EVALUATE,
        inputs,
        out=folder,
        overwrite=args.overwrite,
        label=f"evaluate-{args.label}",
        options=options,
    )
    results_uri = storage.join(result["uri"], "results.json")
    if as_file:
        storage.write_bytes(args.out, storage.read_bytes(results_uri))
        results_uri = args.out
    _print({"results": results_uri, **leaderboard_summary(storage.read_json(results_uri))})
    return 0


def _check_results_file(out: str, folder: str, overwrite: bool) -> None:
    """``--out results.json`` replaces an existing file only when it is the copy an earlier evaluation
    wrote beside its folder (or with --overwrite); a folder of that name is never replaced by a file."""
    fs, path = storage.filesystem(out)
    if not fs.exists(path):
        return
    if fs.isdir(path):
        raise storage.OutputRefused(f"{out}: refusing to write the results file there: it is a folder")
    ours = storage.read_manifest(folder)
    if overwrite or (ours is not None and storage.stage_of(ours) == "evaluate"):
        return
    raise storage.OutputRefused(
        f"{out}: refusing to replace a file that no finmerge evaluation wrote; choose another name, "
        "or pass --overwrite to replace it"
    )


def cmd_promote(args) -> int:
    from finmerge.core import tracking
    from finmerge.registry.promote import promote

    cfg = _config(args)
    if cfg.registry.require_approval and not args.force:
        raise ConfigError(
            "registry.require_approval is on: promote through the promote deployment, which pauses for a "
            "reviewer in the Prefect UI (or pass --force to decide yourself, recorded as forced)"
        )
    uri, exp = tracking.ensure_experiment(cfg.tracking)
    res = promote(
        args.name or cfg.registry.merged_name,
        tracking_uri=uri,
        registry=cfg.registry,
        version=args.version,
        experiment_id=exp,
        force=args.force,
    )
    print(res["report"], file=sys.stderr)
    _print({k: v for k, v in res.items() if k != "report"})
    return 0 if res["decision"] in ("promoted", "forced", "already champion") else 3


def cmd_rollback(args) -> int:
    from finmerge.core import tracking
    from finmerge.registry.promote import rollback

    cfg = _config(args)
    uri = tracking.resolve_uri(cfg.tracking)
    _print(rollback(args.name or cfg.registry.merged_name, tracking_uri=uri, registry=cfg.registry))
    return 0


def cmd_retrain(args) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    from flows.retrain import retrain, retrain_markdown

    res = retrain(_config(args), trigger="manual", force=args.force)
    print(retrain_markdown(res), file=sys.stderr)
    _print({k: v for k, v in res.items() if k not in ("table", "corpus_stages")})
    return 4 if res["decision"] == "skipped" else 0


def cmd_watch(args) -> int:
    from flows.retrain import watch_filings

    _print(watch_filings(_config(args)))
    return 0


def cmd_serve(args) -> int:
    from flows.deployments import flows, serve

    cfg = _config(args)
    print(f"serving deployments: {', '.join(flows())}", file=sys.stderr)
    serve(cfg, limit=args.limit)
    return 0


def cmd_stack(args) -> int:
    from finmerge import stack

    if args.action == "up":
        info = stack.up(args.state)
        print(
            "# the local stack is up; point finmerge at it with:  eval $(finmerge stack env)", file=sys.stderr
        )
        _print({n: s["url"] for n, s in info["services"].items()})
    elif args.action == "down":
        _print(stack.down(args.state))
    elif args.action == "env":
        info = stack.status(args.state)
        if info is None:
            print(f"no stack under {args.state}: run `finmerge stack up`", file=sys.stderr)
            return 1
        for key, value in stack.env(info).items():
            print(f"export {key}={value}")
    else:
        info = stack.status(args.state)
        _print(info or {"running": False})
    return 0

"""The ``finmerge`` command line: the whole pipeline, each stage, and config tools.

Stage subcommands run the stages declared in ``tasks/`` through the same runner as the flows (same output
folder, cache, MLflow run and retry rule) and print a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from finmerge.config import ConfigError, PipelineConfig, config_hash, load_config, reference_markdown
from finmerge.core import storage

DEFAULT_CONFIG = Path("configs/demo.yaml")
OUT_HELP = "output folder URI (default: the stage's folder under storage.uri, reused when complete)"
DEBUG_HELP = "show the Python traceback of an error (also FINMERGE_DEBUG=1)"


def _config(args) -> PipelineConfig:
    path = args.config if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    return load_config(path, args.set)


def _print(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, default=str))


def _staging(args) -> str:
    cfg = _config(args)
    from finmerge.core import storage

    storage.configure_from(cfg.storage)
    return str(Path(cfg.storage.staging_dir).expanduser().resolve())


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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML config (default: configs/demo.yaml if present)")
    # SUPPRESS: a subcommand that is not given --debug keeps the top-level value instead of resetting it
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output location that holds something finmerge did not write "
        "(never an input, the working or home directory, or a root)",
    )
    p = argparse.ArgumentParser(prog="finmerge", description=__doc__)
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("run", parents=[common], help="run the whole pipeline").set_defaults(fn=cmd_run)

    c = sub.add_parser("config", parents=[common], help="validate / show the resolved config, or its schema")
    c.add_argument("action", choices=["validate", "show", "schema", "reference"])
    c.set_defaults(fn=cmd_config)

    corpus = sub.add_parser("corpus", help="corpus stages").add_subparsers(dest="step", required=True)
    steps = (
        ("ingest", "raw files / folders / globs / EDINET → section records (docs.jsonl)"),
        ("clean", "normalise, remove boilerplate and tables, quality-filter, mask PII"),
        ("dedup", "exact + MinHash-LSH near-duplicate removal, incremental"),
    )
    for step, helptext in steps:
        s = corpus.add_parser(step, parents=[common, writes], help=helptext)
        s.add_argument(
            "--input",
            "--in",
            dest="input",
            nargs="+" if step == "ingest" else 1,
            required=step != "ingest",
            help="fsspec URIs (ingest: files, folders, globs; default corpus.ingest.sources)"
            if step == "ingest"
            else "a .jsonl file or a folder holding docs.jsonl",
        )
        s.add_argument("--output", "--out", dest="output", help=OUT_HELP)
        if step in ("ingest", "dedup"):
            s.add_argument("--prev", help=f"previous {step} output of the same corpus (incremental run)")
        s.set_defaults(fn=cmd_corpus)

    t = sub.add_parser("tokenize", parents=[common, writes], help="tokenize and pack a clean corpus")
    t.add_argument("--corpus", required=True)
    t.add_argument("--model", required=True, help="model folder whose tokenizer to use")
    t.add_argument("--out", help=OUT_HELP)
    t.set_defaults(fn=cmd_tokenize)

    pt = sub.add_parser("pretrain", parents=[common, writes], help="continual pretraining on packed tokens")
    pt.add_argument("--model", required=True, help="base HF causal LM (local path or s3:// URI)")
    pt.add_argument("--data", required=True, help="tokenize output, or a corpus (tokenized first)")
    pt.add_argument("--out", help=OUT_HELP + "; checkpoints go to OUT.checkpoints")
    pt.add_argument("--heldout", help="JSONL of held-out finance text: eval loss / perplexity as it trains")
    pt.add_argument("--register", action="store_true", help="register the result in registry.cpt_name")
    pt.set_defaults(fn=cmd_pretrain)
    job = sub.add_parser("pretrain-job", help=argparse.SUPPRESS)  # a launched child (accelerate / torchrun)
    job.add_argument("spec")
    job.set_defaults(fn=cmd_pretrain_job)

    m = sub.add_parser(
        "merge",
        parents=[common, writes],
        help="θ_base + α·τ_inst + β·τ_fin (or ties, dare, slerp), streamed; --config may be a mergekit YAML",
    )
    for flag in ("--base", "--instruct", "--domain"):
        m.add_argument(flag, help="model folder or s3:// URI (default: from a mergekit YAML / recipe)")
    m.add_argument("--out", help=OUT_HELP)
    from finmerge.merge.method_registry import METHOD_NAMES  # torch-free: the one list of merge methods

    m.add_argument("--method", choices=METHOD_NAMES)
    m.add_argument("--alpha", type=float)
    m.add_argument("--beta", type=float)
    m.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    m.set_defaults(fn=cmd_merge)

    a = sub.add_parser("analyze", parents=[common, writes], help="cosine / norms of τ_inst and τ_fin")
    for flag in ("--base", "--instruct", "--domain"):
        a.add_argument(flag, required=True)
    a.add_argument("--out", help=OUT_HELP)
    a.set_defaults(fn=cmd_analyze)

    e = sub.add_parser(
        "evaluate",
        parents=[common, writes],
        help="fin-harness MC (lm-eval exact), finance ppl, chat probe, LLM judge",
    )
    e.add_argument("--model", required=True, help="HF model folder: local path or s3:// URI")
    e.add_argument(
        "--tasks",
        action="append",
        metavar="fin-harness:DATA[:t1,t2]",
        help="harness datasets folder (local or s3://), optionally restricted to some tasks (repeatable)",
    )
    e.add_argument("--prompt-version", help="a version, a comma list, or 'all' (best version reported)")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    e.add_argument("--device", help="default: cuda when available, else cpu")
    e.add_argument("--heldout", help="JSONL of held-out finance text for perplexity")
    e.add_argument("--chat", help="JSONL of chat questions for the instruction-following probe")
    e.add_argument("--label", default="model")
    e.add_argument("--out", help=OUT_HELP + ", or results.json (samples go in the folder of that name)")
    e.set_defaults(fn=cmd_evaluate)

    pr = sub.add_parser(
        "promote", parents=[common], help="gate a version (default: the challenger) against the champion"
    )
    pr.add_argument("--name", help="registered model (default: registry.merged_name)")
    pr.add_argument("--version", help="default: the version holding the new-version alias (challenger)")
    pr.add_argument("--force", action="store_true", help="promote even if a gate fails (recorded as forced)")
    pr.set_defaults(fn=cmd_promote)

    rb = sub.add_parser("rollback", parents=[common], help="champion back to the previous champion")
    rb.add_argument("--name", help="registered model (default: registry.merged_name)")
    rb.set_defaults(fn=cmd_rollback)

    rt = sub.add_parser(
        "retrain",
        parents=[common],
        help="ingest new filings; retrain → merge → evaluate → promote once retrain.min_new_tokens arrived",
    )
    rt.add_argument("--force", action="store_true", help="retrain whatever the count of new tokens")
    rt.set_defaults(fn=cmd_retrain)

    wt = sub.add_parser(
        "watch", parents=[common], help="list retrain.watch_uris once; emit finmerge.filings.arrived if new"
    )
    wt.set_defaults(fn=cmd_watch)

    sv = sub.add_parser(
        "serve",
        parents=[common],
        help="serve every deployment from this process (development; needs PREFECT_API_URL)",
    )
    sv.add_argument("--limit", type=int, help="flow runs at a time")
    sv.set_defaults(fn=cmd_serve)

    st = sub.add_parser("stack", help="no-Docker local stack: moto S3, mlflow server, prefect server")
    st.add_argument("action", choices=["up", "down", "status", "env"])
    st.add_argument("--state", default=".finmerge/stack", help="where pids, logs and the SQLite stores live")
    st.set_defaults(fn=cmd_stack)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's mistake or the environment raises (bad paths, inputs, services): one line each.
    Everything else is a bug in finmerge, reported as one line too, with how to get the traceback."""
    errors: list[type[BaseException]] = [ValueError, OSError, storage.StorageError, RuntimeError, LookupError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:
        pass
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    from finmerge.core import redact

    lines = [line.strip() for line in redact.mask(str(exc)).splitlines() if line.strip()]
    text = " ".join(lines) or type(exc).__name__  # a listed message (- item, - item) on one line
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("FINMERGE_DEBUG") == "1"
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("finmerge: interrupted; nothing half-written was committed", file=sys.stderr)
        return 130
    except ConfigError as exc:
        if debug:
            raise
        print(f"finmerge: config error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except _user_errors() as exc:
        if debug:
            raise
        print(f"finmerge: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        print(
            f"finmerge: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(a bug in finmerge: rerun with --debug for the traceback and report it)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    raise SystemExit(main())

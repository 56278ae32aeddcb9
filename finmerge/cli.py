"""The ``finmerge`` command line: the whole pipeline, each stage, and config tools.

Stage subcommands run the stages declared in ``tasks/`` through the same runner as the flows (same output
folder, cache, MLflow run and retry rule) and print a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from finmerge.commands import (  # noqa: F401 (DEFAULT_CONFIG: re-exported)
    DEFAULT_CONFIG,
    cmd_analyze,
    cmd_config,
    cmd_corpus,
    cmd_evaluate,
    cmd_merge,
    cmd_pretrain,
    cmd_pretrain_job,
    cmd_promote,
    cmd_retrain,
    cmd_rollback,
    cmd_run,
    cmd_serve,
    cmd_stack,
    cmd_sweep,
    cmd_tokenize,
    cmd_watch,
)
from finmerge.config import ConfigError
from finmerge.core import storage

OUT_HELP = "output folder URI (default: the stage's folder under storage.uri, reused when complete)"
DEBUG_HELP = "show the Python traceback of an error (also FINMERGE_DEBUG=1)"


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

    sw = sub.add_parser(
        "sweep",
        parents=[common],
        help="merge every merge.sweep candidate, evaluate each on the validation data, choose by the objective",
    )
    for flag in ("--base", "--instruct", "--domain"):
        sw.add_argument(flag, required=True, help="model folder or s3:// URI")
    sw.add_argument("--alpha", type=float, nargs="+", help="grid of α (default: merge.sweep.alpha)")
    sw.add_argument("--beta", type=float, nargs="+", help="grid of β (default: merge.sweep.beta)")
    sw.add_argument("--harness", action="append", help="validation harness folder (repeatable)")
    sw.add_argument("--heldout", help="validation finance text (JSONL) for perplexity")
    sw.add_argument("--chat", help="validation finance chat questions (JSONL)")
    sw.add_argument("--general", help="validation general chat questions (JSONL)")
    sw.set_defaults(fn=cmd_sweep)

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
    e.add_argument(
        "--general", help="JSONL of general chat questions (facts the base learned in pretraining): general/*"
    )
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


# Stage commands whose MLflow calls go to a side process that loads MLflow while the command works
# (finmerge/core/tracking_sidecar.py): about 2 s less per command.
SIDECAR_COMMANDS = ("merge", "evaluate", "analyze", "corpus", "tokenize")
# The `merge` command's numpy, set before it is imported (a user's own setting wins):
# - OpenBLAS on one thread: it would start a thread per core at import that spins a while before it sleeps,
#   taking CPU from the work (a merge multiplies no matrices with numpy; torch has a BLAS of its own);
#   0.37B task_arithmetic 2.17 -> 2.09 s;
# - large arrays on normal pages, not huge ones: on a VM that hands free memory back to its host, a new 2 MB
#   page costs about four times as much as the same memory in 4 KB pages, and ties' and dare's buffers are
#   new in each command: 0.37B dare_ties after a pause 3.82 -> 3.46 s, ties 3.86 -> 3.68 s.
MERGE_NUMPY_ENV = {"OPENBLAS_NUM_THREADS": "1", "NUMPY_MADVISE_HUGEPAGE": "0"}


def _exit_without_teardown(rc: int) -> None:
    """End a stage command as a normal exit would, minus the interpreter's teardown of its modules, which
    takes ~0.5 s once torch and transformers are loaded (a tenth of a 0.4B merge). What a normal exit does
    first is kept, in its order: wait for live non-daemon threads, run the ``atexit`` handlers (logging's
    flush among them), flush stdout and stderr."""
    import atexit
    import threading

    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def entry() -> None:
    """The ``finmerge`` executable: :func:`main`, then exit. After Ctrl-C the process ends at once: the
    clean-up that matters ran while the interrupt unwound, and a library's exit hook waiting on a network
    call that never answers (an S3 session's close) must not hold the terminal."""
    # A parent that ignores SIGINT (nohup, a test runner, a job launcher) passes the ignore on to us; Ctrl-C
    # must still interrupt finmerge.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sidecar = None
    if len(sys.argv) > 1 and sys.argv[1] == "merge":
        for key, value in MERGE_NUMPY_ENV.items():
            os.environ.setdefault(key, value)
    if len(sys.argv) > 1 and sys.argv[1] in SIDECAR_COMMANDS:
        from finmerge.core import tracking_sidecar

        sidecar = tracking_sidecar.start()
    rc = main()
    if sidecar is not None:
        sidecar.close()
        _exit_without_teardown(rc)
    if rc == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    raise SystemExit(rc)


if __name__ == "__main__":
    entry()

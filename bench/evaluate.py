"""Benchmark: finmerge's harness evaluator against lm-eval's HF backend on the same model and data.

Writes a synthetic benchmark folder in the japanese-lm-fin-harness layout (cma_basics, fp2,
security_sales_1 as data.json, cpa/CPA_AUDIT.xlsx, chabsa/e*_ann.json; no benchmark text), trains a
BPE tokenizer on its prompts and builds a random Llama-style model (nothing is downloaded). Then, for
each prompt version, every task is scored

- by finmerge (`finmerge.evaluate.mc_eval.score_task`, KV path: shared prompt prefix once, each item's context
  once, every choice from the item's cache), and by its row path (lm-eval's algorithm, our code);
- by lm-eval 0.4.13 (`simple_evaluate` on an `HFLM` wrapping the same in-memory model, float32
  log-softmax, its logits cache on). lm-eval gets the items as its own JSON dataset and renders each
  prompt with `finmerge.evaluate.harness.render` (tests check those strings against the reference tables),
  so request construction (whitespace move, joint encoding and split), batching, scoring and metrics
  are lm-eval's own. chabsa's F1 uses the harness's aggregation (macro F1 x 1.5).

Timing: finmerge's scoring (render + encode + forward) against lm-eval's `loglikelihood` call (encode +
forward), both in this process, alternating, best of `--repeats`; `lmeval_total_s` is the whole
`simple_evaluate` (given a task index without lm-eval's bundled tasks, built once). Whole commands
(`--commands`): `finmerge evaluate` on the harness and model folders against `lm_eval run --model hf` with
generated task YAMLs (`--include_path`) over the same JSON docs, each in a fresh process, after one untimed
pair; beside their ratios, the same ratios without the seconds every `lm_eval run` spends indexing lm-eval's
bundled tasks (`lmeval_index_s`, timed alone in a fresh process: its CLI cannot skip them). Tokens: what our
scorer ran (padding included) against the minimum (each context once plus every continuation token), the
padding share, and what lm-eval's batching runs (our row path). Agreement: predicted choice of every item,
|ll difference| over every choice (absolute, and against the tolerance max(1e-4, 1e-6 |ll|)), the task
metrics; for the commands too, from their sample files.

Prints one JSON line. `--scale` shrinks or grows the item counts; the test runs a tiny model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"cma_basics": 38, "fp2": 120, "security_sales_1": 57, "cpa_audit": 100, "chabsa": 600}


T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench/evaluate {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------------------------
def build_inputs(root: Path, args) -> tuple[list, Path]:
    from finmerge.config import TinyModelConfig
    from finmerge.demo.models import init_llama, save_model, train_tokenizer
    from finmerge.evaluate import harness as fin_harness
    from tests.harness_fixtures import write_harness

    sizes = {k: max(2, round(v * args.scale)) for k, v in SIZES.items()}
    write_harness(root / "harness", seed=args.seed, sizes=sizes)
    found = fin_harness.discover_tasks([str(root / "harness")])
    if found.skipped:
        raise SystemExit(f"fixture tasks skipped: {found.skipped}")
    texts = []
    for task in found.tasks:
        for item in task.items:
            prompt = fin_harness.render(item, task.layout, "1.0-0.2.1")
            texts.append(prompt.context + "".join(prompt.choices))
    tok = train_tokenizer(texts, args.vocab, root / "tok")
    shape = TinyModelConfig(
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 2,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        max_position_embeddings=2048,
    )
    model = init_llama(shape, tok, seed=args.seed)
    save_model(model, tok, root / "model", "random benchmark model")
    return found.tasks, root / "model"


def load(folder: Path, device: str):
    from finmerge.models import loading as modelio

    model = modelio.load_causal_lm(folder, dtype=torch.float32).to(device).eval()
    return model, modelio.load_tokenizer(folder)


# -- finmerge ------------------------------------------------------------------------------------------------
def run_ours(model, tok, tasks, version: str, args, kv_reuse: bool) -> tuple[float, dict]:
    from finmerge.evaluate.mc_eval import score_task

    opts = {"batch_size": args.batch_size, "max_length": args.max_length, "device": args.device}
    out = {}
    t = time.perf_counter()
    for task in tasks:
        out[task.name] = score_task(model, tok, task, version, kv_reuse=kv_reuse, progress=False, **opts)
    return time.perf_counter() - t, out


# -- lm-eval -------------------------------------------------------------------------------------------------
def _chabsa_f1(items) -> float:
    from finmerge.evaluate import harness as fin_harness

    golds, preds = zip(*items, strict=True)
    return fin_harness.chabsa_f1(list(golds), list(preds))


def lmeval_task(task, version: str, data_file: Path) -> dict:
    """An lm-eval task config for one harness task: lm-eval's own multiple-choice pipeline end to end."""
    from finmerge.evaluate import harness as fin_harness

    def item(doc) -> fin_harness.Item:
        return fin_harness.Item(
            id=doc["id"],
            question=doc["question"],
            context=doc["context"],
            choices=tuple(doc["choices"]),
            gold=int(doc["gold"]),
        )

    def prompt(doc):
        return fin_harness.render(item(doc), task.layout, version)

    sample = fin_harness.render(task.items[0], task.layout, version)
    metrics = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    metrics.append({"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True})
    if "f1" in fin_harness.metric_names(task.layout):
        metrics.append({"metric": "f1", "aggregation": _chabsa_f1, "higher_is_better": True})
    return {
        "task": f"bench_{task.name}_{version}".replace(".", "_").replace("-", "_"),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "description": "",  # the rendered context already starts with the version's description
        "doc_to_text": lambda doc: prompt(doc).context,
        "doc_to_choice": lambda doc: list(prompt(doc).choices),
        "doc_to_target": lambda doc: int(doc["gold"]),
        "target_delimiter": sample.target_delimiter,
        "num_fewshot": 0,
        "metric_list": metrics,
        "metadata": {"version": 1.0},
    }


@lru_cache(maxsize=1)
def task_index():
    """lm-eval's task index without its thousands of bundled task YAMLs: the tasks here are config dicts,
    and building the full index (``simple_evaluate``'s default) parses them all again on every call, ~20 s
    each on this machine, nine times a run. Built once, outside the timing; the whole ``lm_eval`` commands
    still build theirs, as a user's do."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)


def run_lmeval(lm, tasks, version: str, data_files: dict[str, Path]) -> tuple[float, float, dict]:
    from lm_eval import simple_evaluate

    index = task_index()

    spent = [0.0]
    inner = lm.loglikelihood

    def timed(requests, *a, **kw):
        t = time.perf_counter()
        try:
            return inner(requests, *a, **kw)
        finally:
            spent[0] += time.perf_counter() - t

    lm.loglikelihood = timed
    configs = {lmeval_task(t, version, data_files[t.name])["task"]: t.name for t in tasks}
    t0 = time.perf_counter()
    try:
        res = simple_evaluate(
            model=lm,
            tasks=[lmeval_task(t, version, data_files[t.name]) for t in tasks],
            num_fewshot=0,
            log_samples=True,
            bootstrap_iters=0,
            verbosity="ERROR",
            task_manager=index,
        )
    finally:
        lm.loglikelihood = inner
    total = time.perf_counter() - t0
    out = {}
    for key, name in configs.items():
        samples = sorted(res["samples"][key], key=lambda s: s["doc_id"])
        out[name] = {
            "metrics": res["results"][key],
            "ll": [[float(r[0]) for r in s["filtered_resps"]] for s in samples],
        }
    return spent[0], total, out


def write_docs(tasks, root: Path) -> dict[str, Path]:
    files = {}
    for task in tasks:
        path = root / f"{task.name}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for it in task.items:
                row = {
                    "id": it.id,
                    "question": it.question,
                    "context": it.context,
                    "choices": list(it.choices),
                    "gold": it.gold,
                }
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        files[task.name] = path
    return files


# -- whole commands ------------------------------------------------------------------------------------------
PROMPTS_PY = """import sys
sys.path.insert(0, {root!r})
from finmerge.evaluate import harness as H


def _item(doc):
    return H.Item(id=doc["id"], question=doc["question"], context=doc["context"], choices=tuple(doc["choices"]),
                  gold=int(doc["gold"]))


def _pair(layout, version):
    return (lambda doc: H.render(_item(doc), layout, version).context,
            lambda doc: list(H.render(_item(doc), layout, version).choices))


def gold(doc):
    return int(doc["gold"])


def chabsa_f1(items):
    golds, preds = zip(*items)
    return H.chabsa_f1(list(golds), list(preds))
"""


def write_lmeval_tasks(tasks, versions: list[str], data_files: dict[str, Path], folder: Path) -> None:
    """lm-eval task YAMLs (``--include_path``) over the same JSON docs; prompts rendered by ``!function``."""
    folder.mkdir(parents=True, exist_ok=True)
    funcs = [PROMPTS_PY.format(root=str(ROOT))]
    for version in versions:
        for task in tasks:
            cfg = lmeval_task(task, version, data_files[task.name])
            name = cfg["task"]
            funcs.append(f"text_{name}, choice_{name} = _pair({task.layout!r}, {version!r})\n")
            metrics = "".join(
                f"  - metric: {m['metric']}\n    aggregation: "
                + ("!function prompts.chabsa_f1" if m["metric"] == "f1" else "mean")
                + "\n    higher_is_better: true\n"
                for m in cfg["metric_list"]
            )
            (folder / f"{name}.yaml").write_text(
                f"task: {name}\ndataset_path: json\n"
                f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data_files[task.name]))}\n"
                'test_split: test\noutput_type: multiple_choice\ndescription: ""\n'
                f"doc_to_text: !function prompts.text_{name}\ndoc_to_choice: !function prompts.choice_{name}\n"
                f"doc_to_target: !function prompts.gold\ntarget_delimiter: {json.dumps(cfg['target_delimiter'])}\n"
                f"num_fewshot: 0\nmetric_list:\n{metrics}metadata:\n  version: 1.0\n",
                encoding="utf-8",
            )
    (folder / "prompts.py").write_text("".join(funcs), encoding="utf-8")


def timed_command(argv: list[str], env: dict, cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


INDEX_PY = """import time
from lm_eval.tasks import TaskManager
t = time.perf_counter()
TaskManager()
print(time.perf_counter() - t)
"""


def lmeval_index_seconds(repeats: int) -> float:
    """What every ``lm_eval run`` spends indexing lm-eval's bundled task YAMLs before it looks at ours
    (its CLI has no switch to skip them): the index alone, in a fresh process, best of ``repeats``. Reported
    beside the command ratios, so that a reader sees how much of them it is."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    best = float("inf")
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", INDEX_PY], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"timing lm-eval's task index failed:\n{proc.stderr[-3000:]}")
        best = min(best, float(proc.stdout.strip().splitlines()[-1]))
    return best


def run_commands(tasks, version: str, folder: Path, root: Path, args, n) -> tuple[float, float, dict]:
    """``finmerge evaluate`` and ``lm_eval run`` as a user starts them (a fresh store and output each, so no
    cached result; one MLflow database, as a user's): both wall times, and their samples' agreement."""
    from finmerge.core.storage import iter_jsonl
    from finmerge.evaluate import harness as fin_harness
    from finmerge.evaluate.harness_run import safe_name

    bin_dir = Path(sys.executable).parent
    work = root / "commands" / f"{version}-{n}"
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(
        f"storage:\n  uri: {work / 'store'}\n  staging_dir: {work / 'staging'}\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    ours_argv = [str(bin_dir / "finmerge"), "evaluate", "--config", str(work / "config.yaml"), "--model",
                 str(folder), "--tasks", f"fin-harness:{root / 'harness'}", "--prompt-version", version,
                 "--batch-size", str(args.batch_size), "--device", args.device, "--out", str(work / "ours")]  # fmt: skip
    names = [lmeval_task(t, version, Path())["task"] for t in tasks]
    peer_argv = [str(bin_dir / "lm_eval"), "run", "--model", "hf", "--model_args",
                 f"pretrained={folder},dtype=float32,softmax_dtype=float32,max_length={args.max_length}",
                 "--tasks", ",".join(names), "--include_path", str(root / "lmeval-tasks"), "--device",
                 args.device, "--batch_size", str(args.batch_size), "--output_path", str(work / "peer"),
                 "--log_samples"]  # fmt: skip
    ours_s = timed_command(ours_argv, env, work)
    peer_s = timed_command(peer_argv, env, work)
    ours, ref = {}, {}
    for task, name in zip(tasks, names, strict=True):
        harness_name = safe_name(fin_harness.harness_task_name(task.name, version, task.layout))
        ours[task.name] = {"samples": list(iter_jsonl(str(work / "ours" / f"samples_{harness_name}.jsonl")))}
        peer_file = next((work / "peer").rglob(f"samples_{name}_*.jsonl"))
        rows = sorted(iter_jsonl(str(peer_file)), key=lambda r: r["doc_id"])
        ref[task.name] = {"metrics": {}, "ll": [[float(r[0]) for r in row["filtered_resps"]] for row in rows]}
    return ours_s, peer_s, compare(ours, ref)


# -- comparison ----------------------------------------------------------------------------------------------
def compare(ours: dict, ref: dict) -> dict:
    max_diff, worst, items, same = 0.0, 0.0, 0, 0
    metric_diff = 0.0
    for name, res in ours.items():
        ref_lls = ref[name]["ll"]
        for sample, lls in zip(res["samples"], ref_lls, strict=True):
            mine = np.asarray(sample["ll"], dtype=np.float64)
            theirs = np.asarray(lls, dtype=np.float64)
            diff = np.abs(mine - theirs)
            max_diff = max(max_diff, float(np.max(diff)))
            # the target: within 1e-4, or 1e-6 of the value for long continuations (float32 sums)
            worst = max(worst, float(np.max(diff / np.maximum(1e-4, 1e-6 * np.abs(theirs)))))
            items += 1
            same += int(np.argmax(mine) == np.argmax(theirs))
        for metric in ("acc", "acc_norm", "f1"):
            theirs = ref[name]["metrics"].get(f"{metric},none")
            if metric in res and isinstance(theirs, int | float):
                metric_diff = max(metric_diff, abs(float(res[metric]) - float(theirs)))
    return {
        "items": items,
        "same_prediction": same,
        "max_abs_ll_diff": max_diff,
        "ll_diff_vs_tolerance": worst,
        "max_metric_diff": metric_diff,
    }


def token_stats(runs: dict) -> dict:
    """Tokens the model computed (padding included) against the minimum (each context once plus every
    continuation token), summed over the tasks of one run."""
    keys = ("forward_tokens", "padding_tokens", "min_tokens")
    return {k: sum(r["stats"][k] for r in runs.values()) for k in keys}


def ratios(tokens: dict) -> dict:
    computed = tokens["forward_tokens"]
    return {
        **tokens,
        "tokens_vs_min": round(computed / max(tokens["min_tokens"], 1), 3),
        "padding_share": round(tokens["padding_tokens"] / max(computed, 1), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default="all")
    ap.add_argument("--commands", default="same", help="versions run as whole commands (same, none, list)")
    ap.add_argument("--command-repeats", type=int, default=1)
    ap.add_argument("--no-warm-up", action="store_true", help="no untimed first pair of commands")
    ap.add_argument(
        "--no-row-path", action="store_true", help="skip timing our row path (lm-eval's algorithm)"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the item counts per task")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads, also of the commands (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing to download: no network round trips in either tool
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from finmerge.evaluate.mc_eval import prompt_versions

    log("imports done")
    versions = prompt_versions(args.versions)
    commands = {"same": versions, "none": []}.get(args.commands)
    commands = [v for v in prompt_versions(args.commands) if v in versions] if commands is None else commands
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        root = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(root / "hf-datasets")
        tasks, folder = build_inputs(root, args)
        log("model built")
        data_files = write_docs(tasks, root)
        write_lmeval_tasks(tasks, commands, data_files, root / "lmeval-tasks")
        model, tok = load(folder, args.device)
        log("model loaded")
        lm_args = {"batch_size": args.batch_size, "max_length": args.max_length, "device": args.device}
        lm = HFLM(pretrained=model, tokenizer=tok, softmax_dtype="float32", **lm_args)
        if commands and not args.no_warm_up:  # untimed: MLflow's tables, lm-eval's dataset cache, page cache
            run_commands(tasks, commands[0], folder, root, args, "warm-up")
            log("commands warmed up")
        n_items = sum(len(t.items) for t in tasks)
        log(f"{len(tasks)} tasks, {n_items} items, versions {versions}, device {args.device}")
        rows = {}
        agree = {
            "items": 0,
            "same_prediction": 0,
            **dict.fromkeys(("max_abs_ll_diff", "max_metric_diff"), 0.0),
        }
        agree["ll_diff_vs_tolerance"] = 0.0
        totals = dict.fromkeys(
            ("ours", "ours_row_path", "lmeval", "lmeval_total", "cmd_ours", "cmd_lmeval"), 0.0
        )
        tokens = dict.fromkeys(("forward_tokens", "padding_tokens", "min_tokens", "lmeval_tokens"), 0)
        index_s = None  # lm-eval's task index, timed with the first commands
        for version in versions:
            best = dict.fromkeys(("ours", "ours_row_path", "lmeval", "lmeval_total"), float("inf"))
            row_runs = {}
            for _ in range(args.repeats):  # alternate the tools so drifts in machine speed hit both
                s, ours = run_ours(model, tok, tasks, version, args, kv_reuse=True)
                best["ours"] = min(best["ours"], s)
                if not args.no_row_path:
                    s, row_runs = run_ours(model, tok, tasks, version, args, kv_reuse=False)
                    best["ours_row_path"] = min(best["ours_row_path"], s)
                s, total, ref = run_lmeval(lm, tasks, version, data_files)
                best["lmeval"] = min(best["lmeval"], s)
                best["lmeval_total"] = min(best["lmeval_total"], total)
            cmp = compare(ours, ref)
            checks = [cmp]  # in-process agreement, then that of every pair of whole commands
            used = token_stats(ours)
            row = {
                "ours_items_per_s": round(n_items / best["ours"], 1),
                "lmeval_items_per_s": round(n_items / best["lmeval"], 1),
                "speedup": round(best["lmeval"] / best["ours"], 2),
                "same_prediction": cmp["same_prediction"],
                "max_abs_ll_diff": cmp["max_abs_ll_diff"],
                "ll_diff_vs_tolerance": round(cmp["ll_diff_vs_tolerance"], 3),
                "tokens": ratios(used),
            }
            if row_runs:
                row["row_path_speedup"] = round(best["lmeval"] / best["ours_row_path"], 2)
                row["tokens"]["lmeval_tokens"] = token_stats(row_runs)["forward_tokens"]  # lm-eval's batching
                tokens["lmeval_tokens"] += row["tokens"]["lmeval_tokens"]
            if version in commands:
                cmd = [
                    run_commands(tasks, version, folder, root, args, n) for n in range(args.command_repeats)
                ]
                ours_s, peer_s = min(c[0] for c in cmd), min(c[1] for c in cmd)
                if index_s is None:
                    index_s = lmeval_index_seconds(args.command_repeats)
                row["command"] = {"ours_s": round(ours_s, 2), "lmeval_s": round(peer_s, 2),
                                  "speedup": round(peer_s / ours_s, 2),
                                  "speedup_without_lmeval_index": round((peer_s - index_s) / ours_s, 2)}  # fmt: skip
                totals["cmd_ours"], totals["cmd_lmeval"] = (
                    totals["cmd_ours"] + ours_s,
                    totals["cmd_lmeval"] + peer_s,
                )
                checks += [c[2] for c in cmd]
            rows[version] = row
            log(f"{version}: {row}")
            for check in checks:
                for key in ("items", "same_prediction"):
                    agree[key] += check[key]
                for key in ("max_abs_ll_diff", "ll_diff_vs_tolerance", "max_metric_diff"):
                    agree[key] = max(agree[key], check[key])
            for key in ("ours", "ours_row_path", "lmeval", "lmeval_total"):
                totals[key] += best[key] if best[key] < float("inf") else 0.0
            for key in ("forward_tokens", "padding_tokens", "min_tokens"):
                tokens[key] += used[key]
    scored = n_items * len(versions)
    out = {
        "bench": "evaluate",
        "device": args.device,
        "lm_eval": lm_eval.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": len(tok)},
        "tasks": {t.name: len(t.items) for t in tasks},
        "versions": rows,
        "items_scored": scored,
        "ours_items_per_s": round(scored / totals["ours"], 1),
        "lmeval_items_per_s": round(scored / totals["lmeval"], 1),
        "speedup": round(totals["lmeval"] / totals["ours"], 2),
        "speedup_vs_lmeval_total": round(totals["lmeval_total"] / totals["ours"], 2),
        "tokens": ratios({k: v for k, v in tokens.items() if k != "lmeval_tokens"}),
    }
    if not args.no_row_path:
        out["row_path_speedup"] = round(totals["lmeval"] / totals["ours_row_path"], 2)
        out["tokens"]["lmeval_tokens"] = tokens["lmeval_tokens"]
    if commands:
        out["command"] = {
            "versions": len(commands),
            "ours_s": round(totals["cmd_ours"], 1),
            "lmeval_s": round(totals["cmd_lmeval"], 1),
            "speedup": round(totals["cmd_lmeval"] / totals["cmd_ours"], 2),
            "min_version_speedup": min(rows[v]["command"]["speedup"] for v in commands),
            # part of every lm_eval command: its index of lm-eval's own bundled tasks
            "lmeval_index_s": round(index_s, 2),
            "speedup_without_lmeval_index": round(
                (totals["cmd_lmeval"] - len(commands) * index_s) / totals["cmd_ours"], 2
            ),
            "min_version_speedup_without_lmeval_index": min(
                rows[v]["command"]["speedup_without_lmeval_index"] for v in commands
            ),
        }
    out.update(identical_predictions=agree["same_prediction"] == agree["items"], **agree)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

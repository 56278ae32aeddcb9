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
`simple_evaluate`. Agreement: predicted choice of every item, max |ll difference| over every choice,
and the task metrics.

Prints one JSON line. `--scale` shrinks or grows the item counts; the test runs a tiny model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {"cma_basics": 38, "fp2": 120, "security_sales_1": 57, "cpa_audit": 100, "chabsa": 600}


def log(msg: str) -> None:
    print(f"[bench/evaluate] {msg}", file=sys.stderr, flush=True)


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


def run_lmeval(lm, tasks, version: str, data_files: dict[str, Path]) -> tuple[float, float, dict]:
    from lm_eval import simple_evaluate

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


# -- comparison ----------------------------------------------------------------------------------------------
def compare(ours: dict, ref: dict) -> dict:
    max_diff, items, same = 0.0, 0, 0
    metric_diff = 0.0
    for name, res in ours.items():
        ref_lls = ref[name]["ll"]
        for sample, lls in zip(res["samples"], ref_lls, strict=True):
            mine = np.asarray(sample["ll"], dtype=np.float64)
            theirs = np.asarray(lls, dtype=np.float64)
            max_diff = max(max_diff, float(np.max(np.abs(mine - theirs))))
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
        "max_metric_diff": metric_diff,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default="default,1.0-0.1.2,1.0-0.2.1,1.0-0.6")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the item counts per task")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from finmerge.evaluate.mc_eval import prompt_versions

    versions = prompt_versions(args.versions)
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        root = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(root / "hf-datasets")
        tasks, folder = build_inputs(root, args)
        data_files = write_docs(tasks, root)
        model, tok = load(folder, args.device)
        lm = HFLM(
            pretrained=model,
            tokenizer=tok,
            batch_size=args.batch_size,
            max_length=args.max_length,
            softmax_dtype="float32",
            device=args.device,
        )
        n_items = sum(len(t.items) for t in tasks)
        log(f"{len(tasks)} tasks, {n_items} items, versions {versions}, device {args.device}")
        rows, agree = {}, {"items": 0, "same_prediction": 0, "max_abs_ll_diff": 0.0, "max_metric_diff": 0.0}
        totals = {"ours": 0.0, "ours_row_path": 0.0, "lmeval": 0.0, "lmeval_total": 0.0}
        for version in versions:
            best = {"ours": float("inf"), "ours_row_path": float("inf"), "lmeval": float("inf")}
            lm_total = float("inf")
            for _ in range(args.repeats):  # alternate the tools so drifts in machine speed hit both
                s, ours = run_ours(model, tok, tasks, version, args, kv_reuse=True)
                best["ours"] = min(best["ours"], s)
                s, _ = run_ours(model, tok, tasks, version, args, kv_reuse=False)
                best["ours_row_path"] = min(best["ours_row_path"], s)
                s, total, ref = run_lmeval(lm, tasks, version, data_files)
                best["lmeval"] = min(best["lmeval"], s)
                lm_total = min(lm_total, total)
            cmp = compare(ours, ref)
            rows[version] = {
                "ours_items_per_s": round(n_items / best["ours"], 1),
                "lmeval_items_per_s": round(n_items / best["lmeval"], 1),
                "speedup": round(best["lmeval"] / best["ours"], 2),
                "row_path_speedup": round(best["lmeval"] / best["ours_row_path"], 2),
                "same_prediction": cmp["same_prediction"],
                "max_abs_ll_diff": cmp["max_abs_ll_diff"],
                "forward_tokens": {t: ours[t]["stats"].get("forward_tokens") for t in ours},
            }
            log(f"{version}: {rows[version]}")
            for key in ("items", "same_prediction"):
                agree[key] += cmp[key]
            for key in ("max_abs_ll_diff", "max_metric_diff"):
                agree[key] = max(agree[key], cmp[key])
            totals["ours"] += best["ours"]
            totals["ours_row_path"] += best["ours_row_path"]
            totals["lmeval"] += best["lmeval"]
            totals["lmeval_total"] += lm_total
    scored = n_items * len(versions)
    print(
        json.dumps(
            {
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
                "row_path_speedup": round(totals["lmeval"] / totals["ours_row_path"], 2),
                "identical_predictions": agree["same_prediction"] == agree["items"],
                **agree,
            }
        )
    )


if __name__ == "__main__":
    main()

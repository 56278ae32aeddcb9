"""Benchmark: finmerge's merge against mergekit (`mergekit-yaml`), as whole commands, on three bf16 models.

Generates three sharded bf16 (or, with `--dtype float16`, fp16) Llama-style models that share a base (random,
no download): base ~ N(0, 0.02), instruct and cpt = base + N(0, 0.01) each. Then, for task_arithmetic, ties
and dare_ties, runs the two *commands* a user runs — `finmerge merge …` (tracked in a SQLite MLflow store,
created before the timings) and `mergekit-yaml …` — in child processes on the same inputs, and records wall
time, peak anonymous RSS (sampled from /proc: the inputs are file-backed and the kernel can drop them) and
peak total RSS. Outputs are compared tensor by tensor (bit-identical share, max difference in ulps of the
dtype); dare draws different random masks in the two tools, so only its changed share is compared.

In the same script, so every figure is a ratio of two timings taken here:
* the read bandwidth of the inputs (page cache), and the merge pass (`merge/seconds`) as a share of it;
* the first `finmerge merge` of the inputs (which sha256-hashes them for the model card) against the later
  ones (their sha256 remembered in the staging folder while the files are unchanged);
* K = `--candidates` coefficient sets merged in one pass (`merge_models_many`, what the sweep uses)
  against one (task_arithmetic, library calls in child processes), and each against the floor of merely
  writing and hashing its K outputs' bytes (through the page cache, as mergekit writes, and around it, as
  finmerge's writer does where the file system allows); the same for `--candidates-methods` (ties: the top-k
  thresholds are made once per tensor for all K);
* a retrain of ties / dare: a fourth model (another continual pretraining of the base, "cpt2") merged with
  base and instruct when the decisions of base → instruct are remembered from the merge with cpt
  (``merge-decisions.sqlite``), as on a scheduled retrain, and a repeat of that merge (both vectors
  remembered); each against our task_arithmetic, and the retrain's output against a merge that decided
  everything (byte for byte). The other ties / dare figures forget the decisions before each command;
* cold start: `finmerge merge` on tiny models (all fixed costs, no work to speak of) against
  `python -c "import torch"` and `finmerge --help`.

Prints one JSON line. Defaults are the ~0.95B shape of ../shared/reference/anchors.md (`--layers 24
--hidden 1024 --intermediate 2816` is the 0.37B one); `--layers 2` etc. make a small run (the test uses one).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finmerge.core import storage  # noqa: E402 (after the path setup)
from finmerge.merge import decision_memory  # noqa: E402 (after the path setup)
from finmerge.merge.method_registry import METHODS  # noqa: E402 (after the path setup; torch-free)

CHILD_MANY = """
import json, sys
from finmerge.config import MergeConfig
from finmerge.merge.execute import merge_models_many
base, inst, cpt, out, staging, k, method, dtype = sys.argv[1:9]
grid = [(a, b) for a in (0.5, 0.75, 1.0, 1.25, 1.5) for b in (0.75, 1.0, 1.25)][: int(k)]
jobs = [(f"{out}/c{i}", MergeConfig(method=method, density=0.5, alpha=a, beta=b, dtype=dtype, shard_size_mb=500, hash_inputs=False)) for i, (a, b) in enumerate(grid)]
res = merge_models_many(base, inst, cpt, jobs, staging)
print(json.dumps({"pass_s": res[0]["metrics"]["merge/pass_seconds"], "fused_share": res[0]["metrics"]["merge/fused_share"]}))
"""


# the ~0.95B shape of ../shared/reference/anchors.md (one --flag each)
ANCHOR_SHAPE = {"hidden": 2048, "intermediate": 5632, "layers": 16, "heads": 16, "vocab": 32000}


def log(msg: str) -> None:
    print(f"[bench/merge] {msg}", file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------------------------
def llama_tensors(hidden: int, inter: int, layers: int, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    names = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (hidden, hidden)),
            (p + "self_attn.v_proj.weight", (hidden, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
        ]
    return names + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def make_models(root: Path, args) -> tuple[list[Path], int]:
    """Write base / instruct / cpt / cpt2 (the next retrain's domain model) as sharded safetensors HF folders;
    returns the folders and the parameter count."""
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
        "intermediate_size": args.intermediate, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
        "num_key_value_heads": args.heads, "vocab_size": args.vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": args.dtype, "bos_token_id": 1,
        "eos_token_id": 2,
    }  # fmt: skip
    folders = [root / n for n in ("base", "instruct", "cpt", "cpt2")]
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    # a small word-level tokenizer (ids below vocab): the merged model takes the domain model's tokenizer
    words = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(61))])}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="<unk>")),
        bos_token="<s>",
        eos_token="</s>",
    )
    for f in folders:
        f.mkdir(parents=True)
        (f / "config.json").write_text(json.dumps(config))
        tokenizer.save_pretrained(str(f))
    g = torch.Generator().manual_seed(0)
    shards: list[list[dict]] = [[{}] for _ in folders]
    weight_map: dict[str, str] = {}
    size, n_params, limit = 0, 0, args.shard_mb * 1_000_000
    for name, shape in llama_tensors(args.hidden, args.intermediate, args.layers, args.vocab):
        if name.endswith("norm.weight"):
            base = 1.0 + torch.randn(shape, generator=g) * 0.02
        else:
            base = torch.randn(shape, generator=g) * 0.02
        values = [
            base,
            base + torch.randn(shape, generator=g) * 0.01,
            base + torch.randn(shape, generator=g) * 0.01,
        ]
        values.append(base + torch.randn(shape, generator=g) * 0.01)  # drawn last: the others as before
        nbytes = base.numel() * 2
        if size and size + nbytes > limit:
            for s in shards:
                s.append({})
            size = 0
        for s, v in zip(shards, values, strict=True):
            s[-1][name] = v.to(getattr(torch, args.dtype))
        weight_map[name] = f"model-{len(shards[0]):05d}.safetensors"
        size += nbytes
        n_params += base.numel()
    for folder, model_shards in zip(folders, shards, strict=True):
        total = len(model_shards)
        files = {}
        for i, tensors in enumerate(model_shards, 1):
            fname = f"model-{i:05d}-of-{total:05d}.safetensors"
            save_file(tensors, str(folder / fname), metadata={"format": "pt"})
            files[f"model-{i:05d}.safetensors"] = fname
        index = {
            "metadata": {"total_size": n_params * 2},
            "weight_map": {k: files[v] for k, v in weight_map.items()},
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folders, n_params


def read_bandwidth(folders: list[Path], repeats: int = 3) -> float:
    """GB/s reading every input byte once from the page cache, as the merges do (best of ``repeats``, after
    the generated inputs are written back)."""
    os.sync()
    buf = bytearray(64 << 20)
    best = 0.0
    for _ in range(repeats):
        total, t0 = 0, time.perf_counter()
        for f in folders:
            for p in sorted(f.glob("*.safetensors")):
                with open(p, "rb", buffering=0) as fh:
                    while n := fh.readinto(buf):
                        total += n
        best = max(best, total / (time.perf_counter() - t0) / 1e9)
    return best


# -- running and measuring ---------------------------------------------------------------------------------
def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, peak anonymous RSS (sampled every 20 ms) and peak total RSS (VmHWM).

    Dirty pages are written back first (untimed), so that no command pays for the writeback of what the
    one before it (or the model generation) wrote: that made timings vary by up to 1.5x."""
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip
    peak = {"anon": 0, "hwm": 0}

    def sample() -> None:
        while proc.poll() is None:
            peak["anon"] = max(peak["anon"], _status_kb(proc.pid, "RssAnon"))
            peak["hwm"] = max(peak["hwm"], _status_kb(proc.pid, "VmHWM"))
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}): {err[-2000:]}")
    return {"s": round(seconds, 2), "anon_rss_mb": peak["anon"] // 1024, "peak_rss_mb": peak["hwm"] // 1024,
            "stdout": out.strip().splitlines()[-1] if out.strip() else ""}  # fmt: skip


def tracking_store(root: Path) -> dict:
    """The SQLite MLflow store our commands log to, created once before any timing (as after a user's first
    command: creating it runs MLflow's schema migrations, ~1-2 s, reported apart)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    code = f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"
    created = run_measured([sys.executable, "-c", code])
    return {"uri": uri, "creation_s": created["s"]}


def ours(
    folders: list[Path], out: Path, root: Path, method: str, dtype: str = "bfloat16", remember: bool = False
) -> dict:
    """The `finmerge merge` command, tracked in the existing SQLite store (what a user runs); unless
    ``remember``, ties' and dare's decisions of earlier commands are forgotten first (a first merge)."""
    if not remember:
        (root / "staging" / decision_memory.FILE_NAME).unlink(missing_ok=True)
    exe = str(Path(sys.executable).with_name("finmerge"))
    base, inst, cpt = (str(f) for f in folders)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    cmd = [exe, "merge", "--base", base, "--instruct", inst, "--domain", cpt, "--out", str(out),
           "--method", method, "--dtype", dtype, "--set", "merge.density=0.5",
           "--set", "merge.shard_size_mb=500", "--set", f"storage.staging_dir={root / 'staging'}"]  # fmt: skip
    row = run_measured(cmd, env)
    manifest = json.loads((out / storage.MANIFEST).read_text())
    row["pass_s"] = round(manifest["meta"]["metrics"]["merge/pass_seconds"], 3)
    row["decisions_remembered"] = int(manifest["meta"]["metrics"].get("merge/decisions_remembered", 0))
    return row


def retrain(folders: list[Path], root: Path, method: str, repeats: int, dtype: str) -> dict:
    """A scheduled retrain's merge (base, instruct, the new cpt2) with base → instruct's decisions remembered
    from the merge with cpt, and a repeat of the cpt merge (both remembered); best of ``repeats`` each, taking
    turns. The retrain's output is checked byte for byte against a cpt2 merge that decides everything."""
    base, inst, cpt, cpt2 = folders
    memory = root / "staging" / decision_memory.FILE_NAME
    ours([base, inst, cpt2], root / "decided", root, method, dtype)  # also hashes cpt2, as TA's inputs are
    ours([base, inst, cpt], root / "first", root, method, dtype)
    snapshot = root / "decisions-after-cpt.sqlite"
    shutil.copyfile(memory, snapshot)
    best: dict = {}
    for _ in range(repeats):
        shutil.copyfile(snapshot, memory)
        for kind, domain in (("retrain", cpt2), ("repeat", cpt)):
            out = root / kind
            shutil.rmtree(out, ignore_errors=True)
            got = ours([base, inst, domain], out, root, method, dtype, remember=True)
            got.pop("stdout", None)
            best[kind] = got if kind not in best or got["s"] < best[kind]["s"] else best[kind]
    same = [p.name for p in sorted((root / "decided").iterdir()) if p.suffix in (".safetensors", ".json")]
    best["retrain"]["identical_to_deciding"] = all(
        (root / "retrain" / n).read_bytes() == (root / "decided" / n).read_bytes()
        for n in same
        if n != storage.MANIFEST
    )
    for kind in ("decided", "first", "retrain", "repeat"):
        shutil.rmtree(root / kind, ignore_errors=True)
    return best


def mergekit(folders: list[Path], out: Path, method: str, tmp: Path, dtype: str = "bfloat16") -> dict:
    base, inst, cpt = (str(f) for f in folders)
    params = {"density": 0.5} if METHODS[method].takes_density else {}
    doc = {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": m, "parameters": {"weight": 1.0, **params}} for m in (inst, cpt)],
        "dtype": "float32",
        "out_dtype": dtype,
    }
    cfg = tmp / f"mergekit-{method}.yaml"
    cfg.write_text(json.dumps(doc))
    exe = str(Path(sys.executable).with_name("mergekit-yaml"))
    return run_measured([exe, str(cfg), str(out), "--out-shard-size", "500M", "--random-seed", "0"])


def output_floor(root: Path, nbytes: int, k: int, direct: bool = False) -> float:
    """Seconds to write ``k`` files of ``nbytes`` and sha256 them, each file by a writing and a hashing thread
    (as finmerge's writer), all at once: what any tool that leaves k hashed outputs of that size spends, with
    no merging at all. Through the page cache (what mergekit's writes cost), or with ``direct`` as finmerge
    writes its shards (``merge.direct_writes``: O_DIRECT where the file system allows it)."""
    from finmerge.models.direct_file import DirectFile

    chunk = memoryview(os.urandom(64 << 20))

    def pieces():
        for off in range(0, nbytes, len(chunk)):
            yield chunk[: min(len(chunk), nbytes - off)]

    def write(i: int) -> None:
        with DirectFile(root / f"floor-{i}", direct=direct) as fh:
            for piece in pieces():
                fh.write(piece)

    def digest(i: int) -> str:
        h = hashlib.sha256()
        for piece in pieces():
            h.update(piece)
        return h.hexdigest()

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(2 * k) as pool:
        for fut in [pool.submit(fn, i) for i in range(k) for fn in (write, digest)]:
            fut.result()
    seconds = time.perf_counter() - t0
    for i in range(k):
        (root / f"floor-{i}").unlink()
    return seconds


def candidates_in_one_pass(
    folders: list[Path],
    root: Path,
    k: int,
    repeats: int,
    out_bytes: int,
    method: str = "task_arithmetic",
    dtype: str = "bfloat16",
) -> dict:
    """K coefficient sets (α, β; density 0.5) in one pass against one, best of ``repeats`` each (library
    calls, fresh processes), and each against the floor of writing and hashing its outputs
    (:func:`output_floor`, best of ``repeats``, each measured right before a pass; ``out_bytes`` 0: no
    floor)."""
    args = [str(f) for f in folders]
    times, floors = {}, {}
    for n in (1, k):
        best = None
        for rep in range(repeats):
            # the floor right before each pass: the page cache's state (writeback of earlier outputs,
            # memory to reclaim) changes what a write costs by 2x on a shared VM
            if out_bytes:
                for direct in (False, True):
                    os.sync()
                    floor = output_floor(root, out_bytes, n, direct)
                    floors[n, direct] = min(floors.get((n, direct), floor), floor)
            out = root / f"many-{n}-{rep}"
            r = run_measured(
                [
                    sys.executable,
                    "-c",
                    CHILD_MANY,
                    *args,
                    str(out),
                    str(root / "staging"),
                    str(n),
                    method,
                    dtype,
                ]
            )
            r.update(json.loads(r.pop("stdout")))
            best = r if best is None or r["pass_s"] < best["pass_s"] else best
            shutil.rmtree(out, ignore_errors=True)
        times[n] = best
    row = {
        "k": k,
        "one_pass_s": round(times[1]["pass_s"], 3),
        "k_pass_s": round(times[k]["pass_s"], 3),
        "ratio": round(times[k]["pass_s"] / times[1]["pass_s"], 2),
        "one_command_s": times[1]["s"],
        "k_command_s": times[k]["s"],
        "fused_share": times[k]["fused_share"],
    }
    if floors:
        for direct, how in ((False, "page_cache"), (True, "direct")):
            row[f"output_floor_one_{how}_s"] = round(floors[1, direct], 3)
            row[f"output_floor_k_{how}_s"] = round(floors[k, direct], 3)
        row["k_pass_vs_its_direct_output_floor"] = round(times[k]["pass_s"] / floors[k, True], 2)
    return row


def cold_start(root: Path, repeats: int) -> dict:
    """Fixed costs of a command: `finmerge merge` on three tiny models against importing torch (best of
    ``repeats``)."""
    args = argparse.Namespace(
        hidden=64, intermediate=128, layers=2, heads=4, vocab=64, shard_mb=1000, dtype="bfloat16"
    )
    folders, _ = make_models(root / "tiny", args)
    exe = str(Path(sys.executable).with_name("finmerge"))
    runs: dict[str, list[float]] = {"merge_command": [], "import_torch": [], "help": []}
    for rep in range(repeats):
        runs["import_torch"].append(run_measured([sys.executable, "-c", "import torch"])["s"])
        runs["help"].append(run_measured([exe, "--help"])["s"])
        r = ours(folders[:3], root / f"tiny-out-{rep}", root, "task_arithmetic")
        runs["merge_command"].append(r["s"])
    best = {k: min(v) for k, v in runs.items()}
    return {
        **{f"{k}_s": v for k, v in best.items()},
        "merge_command_vs_import_torch": round(best["merge_command"] / best["import_torch"], 2),
    }


def _tensors(folder: Path):
    for p in sorted(folder.glob("*.safetensors")):
        with safe_open(str(p), "pt") as fh:
            for name in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, fh.get_tensor(name)


def compare(a: Path, b: Path, dtype: str = "bfloat16") -> dict:
    """Share of bit-identical values and the largest difference in units of ``dtype``'s rounding (ulps)."""
    other = dict(_tensors(b))
    same = total = 0
    worst = 0.0
    for name, x in _tensors(a):
        y = other.pop(name)
        xf, yf = x.float(), y.float()
        same += int((x == y).sum())
        total += x.numel()
        ulp = torch.finfo(getattr(torch, dtype)).eps * torch.maximum(xf.abs(), yf.abs()).clamp_min(1e-30)
        worst = max(worst, float(((xf - yf).abs() / ulp).max()))
    return {
        "identical_share": round(same / total, 6),
        "max_diff_ulps": round(worst, 2),
        "missing": sorted(other),
    }


def kept_share(merged: Path, folders: list[Path]) -> float:
    """dare: share of entries where the merge differs from the base (a proxy for what survived the drop)."""
    base = dict(_tensors(folders[0]))
    moved = total = 0
    for name, x in _tensors(merged):
        moved += int((x != base[name]).sum())
        total += x.numel()
    return round(moved / total, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key, default in ANCHOR_SHAPE.items():
        ap.add_argument(f"--{key}", type=int, default=default)
    ap.add_argument("--shard-mb", type=int, default=1000, help="input shard size")
    ap.add_argument("--methods", nargs="+", default=["task_arithmetic", "ties", "dare_ties"])
    ap.add_argument("--candidates", type=int, default=9, help="K of the one-pass measurement (0: skip)")
    ap.add_argument(
        "--candidates-methods", nargs="*", default=["ties"], help="also time the K-candidate pass of these"
    )
    ap.add_argument("--no-cold-start", action="store_true", help="skip the cold-start measurement")
    ap.add_argument("--no-retrain", action="store_true", help="skip the ties / dare retrain measurement")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="best of N for our commands, mergekit's first method, the K-pass and cold start",
    )
    ap.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16", help="of the models")
    ap.add_argument("--workdir", help="where to put the models (default: a temp dir; needs ~5 GB per 1B)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        log("generating four models (base, instruct, cpt, and cpt2 for the retrain)")
        folders, n_params = make_models(root, args)
        folders, cpt2 = folders[:3], folders[3]
        input_bytes = sum(p.stat().st_size for f in folders for p in f.glob("*.safetensors"))
        bw = read_bandwidth(folders)
        log(
            f"{n_params / 1e9:.3f}B parameters per model, {input_bytes / 1e9:.2f} GB of inputs, read {bw:.2f} GB/s"
        )
        store = tracking_store(root)
        results: dict = {}
        for method in args.methods:
            row = {}
            if method == args.methods[0]:
                # the first merge of these inputs hashes them for the model card; later ones (below, and
                # every other method) find their sha256 remembered in the staging folder
                log(f"{method}: ours, first merge of these inputs")
                row["ours_first_merge"] = ours(folders, root / "first", root, method, args.dtype)
                row["ours_first_merge"].pop("stdout", None)
                shutil.rmtree(root / "first")
            # ours (seconds each) best of --repeats for every method, so that the methods' ratios to
            # task_arithmetic compare like with like; mergekit's first method too, its others once (minutes
            # each at 0.95B). The tools take turns (ours, mergekit, ours, ...): a shared VM's speed drifts by
            # tens of percent within minutes, and each tool should meet the same phases of it.
            reps = {"ours": args.repeats, "mergekit": args.repeats if method == args.methods[0] else 1}
            for rep in range(args.repeats):
                for tool in [t for t in ("ours", "mergekit") if rep < reps[t]]:
                    out = root / f"{tool}-{method}"
                    log(f"{method}: {tool} ({rep + 1}/{reps[tool]})")
                    shutil.rmtree(out, ignore_errors=True)
                    got = (
                        ours(folders, out, root, method, args.dtype)
                        if tool == "ours"
                        else mergekit(folders, out, method, root, args.dtype)
                    )
                    row[tool] = got if tool not in row or got["s"] < row[tool]["s"] else row[tool]
            for tool in ("ours", "mergekit"):
                if tool == "ours":
                    row[tool]["pass_share_of_read_bandwidth"] = _share(input_bytes, row[tool]["pass_s"], bw)
                row[tool].pop("stdout", None)
                row[tool]["share_of_read_bandwidth"] = _share(input_bytes, row[tool]["s"], bw)
            if METHODS[method].sparsification == "random":  # the two tools draw different masks
                for tool in ("ours", "mergekit"):
                    row[tool]["changed_share"] = kept_share(root / f"{tool}-{method}", folders)
            else:
                row["equality"] = compare(root / f"ours-{method}", root / f"mergekit-{method}", args.dtype)
            row["speedup"] = round(row["mergekit"]["s"] / row["ours"]["s"], 3)
            if "ours_first_merge" in row:
                row["speedup_first_merge"] = round(row["mergekit"]["s"] / row["ours_first_merge"]["s"], 3)
            row["anon_rss_ratio"] = round(
                row["ours"]["anon_rss_mb"] / max(row["mergekit"]["anon_rss_mb"], 1), 3
            )
            if METHODS[method].sparsification and not args.no_retrain:
                log(f"{method}: ours, a retrain (base → instruct's decisions remembered) and a repeat")
                got = retrain([*folders, cpt2], root, method, args.repeats, args.dtype)
                ta = results.get("task_arithmetic", {}).get("ours", {}).get("s")
                for kind, r in got.items():
                    r["vs_task_arithmetic"] = round(r["s"] / ta, 3) if ta else None
                    row[f"ours_{kind}"] = r
            results[method] = row
            for tool in ("ours", "mergekit"):
                shutil.rmtree(root / f"{tool}-{method}", ignore_errors=True)
            log(f"{method}: {json.dumps(row)}")
        many = None
        if args.candidates > 1:
            log(f"{args.candidates} candidates in one pass against one")
            many = candidates_in_one_pass(
                folders, root, args.candidates, args.repeats, input_bytes // 3, dtype=args.dtype
            )
            log(json.dumps(many))
            for method in args.candidates_methods:  # ties / dare: each tensor's decisions made once for all K
                log(f"{args.candidates} {method} candidates in one pass against one")
                got = candidates_in_one_pass(
                    folders, root, args.candidates, args.repeats, 0, method, args.dtype
                )
                many[method] = {k: v for k, v in got.items() if k in ("one_pass_s", "k_pass_s", "ratio")}
                log(json.dumps(many[method]))
        cold = None
        if not args.no_cold_start:
            log("cold start")
            cold = cold_start(root, args.repeats)
            log(json.dumps(cold))
    ta = results.get("task_arithmetic", {}).get("ours", {}).get("s")
    summary = {
        "bench": "merge",
        "dtype": args.dtype,
        "params_per_model": n_params,
        "input_gb": round(input_bytes / 1e9, 3),
        "read_gb_per_s": round(bw, 3),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "methods": results,
        "ours_vs_own_task_arithmetic": {
            m: round(r["ours"]["s"] / ta, 3) for m, r in results.items() if ta and m != "task_arithmetic"
        },
        "tracking_store_creation_s": store["creation_s"],
        "candidates_in_one_pass": many,
        "cold_start": cold,
        "mergekit": _version("mergekit"),
        "torch": torch.__version__,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(summary))


def _share(nbytes: int, seconds: float, bw_gb_s: float) -> float:
    """Input throughput of a run as a fraction of the measured read bandwidth."""
    return float(f"{nbytes / 1e9 / max(seconds, 1e-9) / bw_gb_s:.3g}")


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()

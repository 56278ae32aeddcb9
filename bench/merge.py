"""Benchmark: our streaming task-arithmetic merge vs a naive in-memory merge of the same three models.

The reference loads the three state dicts fully (safetensors.torch.load_file), computes in fp32 and saves
one file: the obvious script a user would write. Both run in fresh child processes so peak RSS is theirs.
Prints one JSON line: seconds and peak RSS of each, and the ratios (ours / reference).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD_OURS = """
import resource, sys, time
from finmerge.config import MergeConfig
from tasks.merge import merge_models
t = time.perf_counter()
merge_models(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], MergeConfig(shard_size_mb=64), sys.argv[5])
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

CHILD_NAIVE = """
import resource, sys, time
from safetensors.torch import load_file, save_file
t = time.perf_counter()
b, i, d = (load_file(p + "/model.safetensors") for p in sys.argv[1:4])
out = {k: (b[k].float() + (i[k].float() - b[k].float()) + (d[k].float() - b[k].float())).to(b[k].dtype) for k in b}
save_file(out, sys.argv[4] + "/model.safetensors")
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_models(root: Path) -> list[str]:
    import torch

    from finmerge import storage
    from finmerge.config import TinyModelConfig
    from finmerge.demo.models import init_llama, save_model, train_tokenizer

    shape = TinyModelConfig(
        vocab_size=400, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8
    )
    tok = train_tokenizer(iter(["株式会社の売上高は増加しました。"] * 50), 400, root / "tok")
    uris = []
    for name, seed in (("base", 0), ("instruct", 1), ("cpt", 2)):
        model = init_llama(shape, tok, 0)
        if seed:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.01)
        with storage.output_folder(str(root / name), str(root / "staging")) as out:
            save_model(model, tok, out.path, "# bench")
        uris.append(str(root / name))
    return uris


def run_child(code: str, *args: str) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, check=True
    )
    seconds, rss_kb = out.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(rss_kb)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, inst, cpt = make_models(root)
        size = sum(p.stat().st_size for p in (root / "base").glob("*.safetensors"))
        (root / "naive").mkdir()
        t_ref, rss_ref = run_child(CHILD_NAIVE, base, inst, cpt, str(root / "naive"))
        t0 = time.perf_counter()
        t_ours, rss_ours = run_child(CHILD_OURS, base, inst, cpt, str(root / "ours"), str(root / "staging"))
        print(
            json.dumps(
                {
                    "bench": "merge_task_arithmetic",
                    "model_bytes": size,
                    "inputs_gb": round(3 * size / 1e9, 3),
                    "ours_s": round(t_ours, 3),
                    "reference_s": round(t_ref, 3),
                    "time_ratio": round(t_ours / t_ref, 3),
                    "ours_peak_rss_mb": rss_ours // 1024,
                    "reference_peak_rss_mb": rss_ref // 1024,
                    "rss_ratio": round(rss_ours / rss_ref, 3),
                    "ours_input_gb_per_s": round(3 * size / 1e9 / t_ours, 3),
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
            )
        )


if __name__ == "__main__":
    main()

"""The fused linear-merge kernel writes bit for bit what the torch path writes (weights and the per-tensor
max |Δ| of merge_report.json), for bf16, fp16 and fp32 inputs (also mixed) and outputs, odd shapes and an
extended vocab; and K candidates merged in one pass equal K separate merges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finmerge.config import MergeConfig
from finmerge.merge import fused
from finmerge.merge.execute import MergeError, merge_models, merge_models_many
from tests.helpers import with_bad_value
from tests.test_merge import EXTRA_TOKENS, _triplet


@pytest.fixture(autouse=True)
def _kernel_on_tiny_models(monkeypatch):
    """These models are far below fused.MIN_ELEMENTS: force the kernel (FINMERGE_FUSED=1)."""
    monkeypatch.setenv("FINMERGE_FUSED", "1")


@pytest.fixture(scope="module")
def triplets(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("fused")
    bf16 = _triplet(root / "bf16", dtype=torch.bfloat16, committed=False)
    fp16 = _triplet(root / "fp16", dtype=torch.float16, committed=False)
    fp32 = _triplet(root / "fp32", committed=False)
    return {
        "bf16": bf16,
        "fp16": fp16,
        "fp32": fp32,
        "vocab": _triplet(root / "vocab", extra_tokens=EXTRA_TOKENS, committed=False),
        # each input in its own format: a bf16 base and instruct with an fp32 CPT (master weights kept),
        # and all three formats at once
        "bf16-fp32-cpt": {**bf16, "domain": fp32["domain"]},
        "three-formats": {"base": fp16["base"], "instruct": bf16["instruct"], "domain": fp32["domain"]},
    }


CONFIGS = {
    "paper": MergeConfig(),
    "uneven": MergeConfig(alpha=0.3, beta=1.21),
    "domain-only": MergeConfig(alpha=0.0, beta=1.0),
    "linear": MergeConfig(method="linear", alpha=0.37, beta=0.5),
    "normalized": MergeConfig(alpha=0.75, beta=1.0, lambda_scale=0.7, normalize=True),
    "to-fp32": MergeConfig(alpha=0.5, beta=0.5, dtype="float32"),
    "to-bf16": MergeConfig(alpha=1.0, beta=0.9, dtype="bfloat16"),
    "to-fp16": MergeConfig(alpha=0.8, beta=1.1, dtype="float16"),
}


def _content(folder: str | Path) -> dict:
    """Weight files byte for byte and merge_report.json's rows (max |Δ| vs each input per tensor)."""
    f = Path(folder)
    return {
        "weights": {p.name: p.read_bytes() for p in sorted(f.glob("*.safetensors"))},
        "report": json.loads((f / "merge_report.json").read_text())["tensors"],
    }


def _merge(tri: dict, out: Path, cfg: MergeConfig, **kw) -> dict:
    return merge_models(
        tri["base"], tri["instruct"], tri["domain"], str(out), cfg, str(out.parent / "st"), **kw
    )


@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize("inputs", ["bf16", "fp16", "fp32", "vocab", "bf16-fp32-cpt", "three-formats"])
def test_fused_kernel_writes_what_the_torch_path_writes(triplets, tmp_path, monkeypatch, inputs, case):
    tri, cfg = triplets[inputs], CONFIGS[case]
    # odd blocks: 7 rows of 64 — tiles and the two threads' halves end mid-row
    got = _merge(tri, tmp_path / "fused", cfg, block_elems=7 * 64)
    assert got["metrics"]["merge/fused_share"] == 1.0  # the kernel did every merged element
    monkeypatch.setenv("FINMERGE_FUSED", "0")
    want = _merge(tri, tmp_path / "torch", cfg, block_elems=7 * 64)
    assert want["metrics"]["merge/fused_share"] == 0.0
    a, b = _content(tmp_path / "fused"), _content(tmp_path / "torch")
    assert a["weights"].keys() == b["weights"].keys()
    assert all(a["weights"][k] == b["weights"][k] for k in a["weights"])
    assert a["report"] == b["report"]


def test_fp16_takes_the_torch_path_on_a_cpu_without_fp16_conversions(triplets, tmp_path, monkeypatch):
    """The kernels' fp16 code relies on the CPU's conversions (F16C); without them fp16 merges are the
    torch path's, the same bytes. ties' kernel decides the same way."""
    from finmerge.merge import fused_ties

    assert fused.fp16_convertible({torch.float16}) is True  # this machine (and CI) has F16C
    monkeypatch.setattr(fused, "_hardware_fp16", lambda: False)
    assert not fused.available([torch.float16], torch.bfloat16)
    assert not fused.available([torch.bfloat16], torch.float16)
    assert not fused_ties.available([torch.float16], torch.float16, torch.float32)
    assert fused.available([torch.bfloat16], torch.float32)  # other formats are not affected
    got = _merge(triplets["fp16"], tmp_path / "m", CONFIGS["paper"], block_elems=7 * 64)
    assert got["metrics"]["merge/fused_share"] == 0.0


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@pytest.mark.parametrize(
    ("inp", "out"), [("bf16", "bf16"), ("fp16", "fp16"), ("fp16", "fp32"), ("bf16", "fp16")]
)
def test_kernel_on_random_values_with_ties_and_tails(inp, out):
    """Element-level check on 50,001 values (not a multiple of the tile) per coefficient set, all at once:
    the rounding ties of bf16 / fp16 and the FMA of torch's add_(alpha) are where a naive kernel differs;
    a tenth of the values are fp16 subnormals (below 6.1e-5), whose conversions either way must be exact."""
    g = torch.Generator().manual_seed(7)
    n = 50_001
    tiny = torch.rand(n, generator=g) < 0.1
    x = {
        r: torch.where(tiny, torch.randn(n, generator=g) * 2e-5, torch.randn(n, generator=g) * 0.02).to(
            DTYPES[inp]
        )
        for r in ("base", "instruct", "domain")
    }
    coefs = [
        (-1.0, 1.0, 1.0),
        (0.3, 0.3, 0.4),
        (1 - 0.37 - 1.21, 0.37, 1.21),
        (0.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
    ]
    dtype = DTYPES[out]
    bits = torch.int32 if out == "fp32" else torch.int16
    result = np.empty((len(coefs), n), fused.format_bits(dtype))
    diag = fused.FusedWeightedSums(threads=2)({r: fused.bits(v) for r, v in x.items()}, coefs, result)
    for k, (cb, ci, cd) in enumerate(coefs):
        terms = [
            (x[r].float(), c)
            for r, c in zip(("base", "instruct", "domain"), (cb, ci, cd), strict=True)
            if c != 0.0
        ]
        acc = torch.zeros(n)
        for j, (v, c) in enumerate(terms):
            acc = (v.clone() if c == 1.0 else torch.mul(v, c)) if j == 0 else acc.add_(v, alpha=c)
        want = acc.to(dtype)
        got = torch.from_numpy(result[k]).view(bits).view(dtype)
        assert torch.equal(got.view(bits), want.view(bits)), coefs[k]
        assert diag[k] == (float((want.float() - x["domain"].float()).abs().max()),
                           float((want.float() - x["instruct"].float()).abs().max()))  # fmt: skip


def test_a_non_finite_input_is_named_with_the_kernel_on(triplets, tmp_path):
    """The kernel spots the Inf and the torch path names the input, tensor and rows, as before."""
    src = triplets["bf16"]
    bad, name = with_bad_value(
        src["instruct"], tmp_path / "instruct", "mlp.up_proj.weight", float("inf"), (3, 5)
    )
    tri = {**src, "instruct": str(bad)}
    with pytest.raises(MergeError, match=rf"input instruct tensor {name} .*1 Inf"):
        _merge(tri, tmp_path / "out", MergeConfig())
    assert not (tmp_path / "out").exists()


def test_k_candidates_in_one_pass_equal_k_separate_merges(triplets, tmp_path):
    tri = triplets["vocab"]
    jobs = {
        "a": MergeConfig(),
        "b": MergeConfig(alpha=0.5, beta=1.25),
        "c": MergeConfig(method="linear", alpha=0.4, beta=0.6),
        "d": MergeConfig(method="ties", density=0.5),  # the torch path, in the same pass
    }
    many = merge_models_many(
        tri["base"], tri["instruct"], tri["domain"],
        [(str(tmp_path / "many" / k), cfg) for k, cfg in jobs.items()], str(tmp_path / "st"),
    )  # fmt: skip
    assert [r["metrics"]["merge/candidates_in_pass"] for r in many] == [4.0] * 4
    for key, cfg in jobs.items():
        _merge(tri, tmp_path / "one" / key, cfg)
        assert _content(tmp_path / "many" / key) == _content(tmp_path / "one" / key), key


def test_candidates_that_cannot_share_a_pass_are_refused_before_writing(triplets, tmp_path):
    tri = triplets["fp32"]
    jobs = [
        (str(tmp_path / "a"), MergeConfig(dtype="float32")),
        (str(tmp_path / "b"), MergeConfig(dtype="bfloat16")),
    ]
    with pytest.raises(MergeError, match="merge them separately"):
        merge_models_many(tri["base"], tri["instruct"], tri["domain"], jobs, str(tmp_path / "st"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


_KERNEL_WITHOUT_SCIPY_LINALG = """
import sys
import numpy as np, torch
preloaded = sys.argv[1] == "1"
if preloaded:
    import scipy.linalg  # a user's own code had it loaded: numba keeps its BLAS
from finmerge.merge import fused
x = {r: torch.full((16384,), v, dtype=torch.bfloat16) for r, v in (("base", 1.0), ("instruct", 2.0), ("domain", 3.0))}
out = torch.empty((1, 16384), dtype=torch.bfloat16)
fused.FusedWeightedSums(threads=1)({r: fused.bits(v) for r, v in x.items()}, [(-1.0, 1.0, 1.0)], fused.bits(out))
loaded = "scipy.linalg" in sys.modules
import numba.np.arraymath, scipy.linalg  # importable again afterwards
print(loaded, numba.np.arraymath._HAVE_BLAS, float(out[0, 0]), float(out[0, -1]))
"""


@pytest.mark.parametrize("preloaded", [False, True])
def test_the_kernels_start_numba_without_scipy_linalg_unless_it_was_loaded(preloaded):
    """numba's CPU target imports scipy.linalg (0.15 s) only for np.dot & co., which no kernel calls: it is
    hidden while the target starts, and importable again afterwards. Loaded before, it stays in use."""
    import subprocess
    import sys

    got = subprocess.run(
        [sys.executable, "-c", _KERNEL_WITHOUT_SCIPY_LINALG, str(int(preloaded))],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    assert got == [str(preloaded), str(preloaded), "4.0", "4.0"]


_MERGE_AND_SAY_WHAT_LOADED = """
import sys
from finmerge.config import MergeConfig
from finmerge.merge.execute import merge_models
base, inst, dom, out, staging, method = sys.argv[1:7]
merge_models(base, inst, dom, out, MergeConfig(method=method, density=0.5), staging)
print("torch" in sys.modules, "numba" in sys.modules)
"""


@pytest.mark.parametrize("method", ["task_arithmetic", "linear", "ties", "dare_ties"])
def test_a_merge_on_the_kernels_never_imports_torch(triplets, tmp_path, method):
    """Importing torch takes about a second, as long as a 0.4B merge's pass: the kernels read, combine and
    write numpy arrays of the tensors' bits, so the merge runs without it. The bytes are the torch path's,
    as the other tests here check."""
    import os
    import subprocess
    import sys

    tri = triplets["bf16"]
    env = {**os.environ, "FINMERGE_FUSED": "1"}
    args = [tri["base"], tri["instruct"], tri["domain"], str(tmp_path / "out"), str(tmp_path / "st"), method]
    got = subprocess.run(
        [sys.executable, "-c", _MERGE_AND_SAY_WHAT_LOADED, *args],
        capture_output=True, text=True, timeout=300, env=env, check=True,
    ).stdout.split()  # fmt: skip
    assert got == ["False", "True"]
    want = merge_models(tri["base"], tri["instruct"], tri["domain"], str(tmp_path / "here"),
                        MergeConfig(method=method, density=0.5), str(tmp_path / "st2"))  # fmt: skip
    assert _content(tmp_path / "out") == _content(want["uri"])

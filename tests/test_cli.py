import json

import torch
from safetensors.torch import load_file

from finmerge.cli import main
from tests.helpers import tiny_model


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_config_errors_exit_2(capsys):
    assert main(["config", "validate", "--set", "merge.alhpa=1"]) == 2
    assert "merge.alhpa" in capsys.readouterr().err
    assert main(["config", "validate", "--set", "merge.alpha=0.5"]) == 0


def test_merge_and_analyze_commands(tmp_path, capsys):
    base, inst, dom = (tiny_model(tmp_path / n, seed=s) for n, s in (("b", 1), ("i", 2), ("d", 3)))
    staging = f"storage.staging_dir={tmp_path / 'staging'}"
    rc = main(
        [
            "merge",
            "--base",
            str(base),
            "--instruct",
            str(inst),
            "--domain",
            str(dom),
            "--out",
            str(tmp_path / "m"),
            "--alpha",
            "0",
            "--beta",
            "0",
            "--set",
            staging,
        ]
    )
    assert rc == 0
    out = _last_json(capsys)
    assert out["uri"] == str(tmp_path / "m") and out["digest"]
    merged, want = load_file(tmp_path / "m" / "model.safetensors"), load_file(base / "model.safetensors")
    assert merged.keys() == want.keys() and all(torch.equal(merged[k], want[k]) for k in want)

    assert (
        main(
            [
                "analyze",
                "--base",
                str(base),
                "--instruct",
                str(inst),
                "--domain",
                str(dom),
                "--out",
                str(tmp_path / "a"),
                "--set",
                staging,
            ]
        )
        == 0
    )
    report = _last_json(capsys)
    # cos(τ_inst, τ_fin) over all tensors, recomputed here from the safetensors: three independent random
    # inits share only -θ_base, so the cosine is |θ_b|² / (|θ_i - θ_b| |θ_d - θ_b|) ≈ 1/2 (0.5029 here);
    # the cosine of the models themselves (no base subtracted) is 0.90 here, a sign error gives -1/2
    b, i, d = (load_file(m / "model.safetensors") for m in (base, inst, dom))
    t_inst = torch.cat([(i[k].double() - b[k].double()).flatten() for k in sorted(b)])
    t_fin = torch.cat([(d[k].double() - b[k].double()).flatten() for k in sorted(b)])
    want_cos = float(t_inst @ t_fin / (t_inst.norm() * t_fin.norm()))
    assert abs(report["metrics"]["analyze/cos_global"] - want_cos) < 1e-6 and 0.45 < want_cos < 0.55
    assert (tmp_path / "a" / "cos_heatmap.png").stat().st_size > 1000


def test_corpus_commands_chain(tmp_path, capsys):
    """ingest → clean → dedup with --input/--output, one JSON line each; a plain JSONL file works as input."""
    raw = tmp_path / "raw"
    raw.mkdir()
    text = (
        "株式会社青葉精機の主な事業は精密機械の製造であり、工作機械向けの部品を国内外の顧客に販売しております。"
        "当社は愛知県名古屋市に本社を置き、三つの工場で生産を行っております。当連結会計年度の売上高は"
        "前期比で増加しましたが、原材料価格の上昇により営業利益は減少いたしました。今後は海外での販売体制を"
        "強化するとともに、省力化のための設備投資を進めてまいります。為替の変動は業績に影響を及ぼす可能性があります。"
    )
    twin = text.replace("名古屋市", "名古屋市中区")
    rows = [{"text": text, "doc_id": "A"}, {"text": twin, "doc_id": "B"}]
    (raw / "a.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{broken\n", encoding="utf-8"
    )
    staging = ["--set", f"storage.staging_dir={tmp_path / 'staging'}"]
    assert main(["corpus", "ingest", "--input", str(raw), "--output", str(tmp_path / "i"), *staging]) == 0
    ing = _last_json(capsys)
    assert (ing["stage"], ing["docs"], ing["quarantined"], ing["new_files"]) == ("ingest", 2, 1, 1)
    again = [
        "corpus",
        "ingest",
        "--input",
        str(raw),
        "--output",
        str(tmp_path / "i2"),
        "--prev",
        str(tmp_path / "i"),
    ]
    assert main([*again, *staging]) == 0
    assert _last_json(capsys)["docs"] == 0  # nothing new
    assert (
        main(["corpus", "clean", "--input", str(tmp_path / "i"), "--output", str(tmp_path / "c"), *staging])
        == 0
    )
    assert _last_json(capsys)["kept"] == 2
    dedup_args = [
        "corpus",
        "dedup",
        "--input",
        str(tmp_path / "c" / "docs.jsonl"),
        "--output",
        str(tmp_path / "d"),
    ]
    assert main([*dedup_args, *staging]) == 0
    out = _last_json(capsys)
    assert out["output"] == str(tmp_path / "d") and out["kept"] == 1
    (dropped,) = [json.loads(x) for x in (tmp_path / "d" / "dropped.jsonl").read_text().splitlines()]
    assert dropped["id"] == "B#0" and dropped["duplicate_of"] == "A#0" and dropped["text"] == twin


def test_a_stage_command_exits_as_a_normal_exit_would_without_the_teardown():
    """What a normal exit does before the interpreter tears its modules down still happens, in its order:
    a live non-daemon thread is waited for, atexit handlers run, unflushed output reaches the pipe."""
    import subprocess
    import sys

    code = (
        "import atexit, threading, time\n"
        "from finmerge.cli import _exit_without_teardown\n"
        "atexit.register(lambda: print('atexit ran', end=' '))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', end=' '))).start()\n"
        "print('output', end=' ')\n"
        "_exit_without_teardown(3)\n"
        "print('never')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.split() == ["output", "thread", "done", "atexit", "ran"]


def test_merge_runs_numpy_with_one_blas_thread_and_no_huge_pages_unless_the_user_says_otherwise():
    """Set by the executable before numpy is imported (finmerge.cli.MERGE_NUMPY_ENV); another command's numpy,
    and a user's own setting, are left as they are."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, finmerge.cli as cli\n"
        "def main():\n"
        "    import os, numpy\n"
        "    print(os.environ.get('OPENBLAS_NUM_THREADS'), numpy._core.multiarray._get_madvise_hugepage())\n"
        "    return 0\n"
        "cli.main = main\n"
        "sys.argv = ['finmerge', sys.argv[1]]\n"
        "cli.entry()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "NUMPY_MADVISE_HUGEPAGE")}
    env["FINMERGE_TRACKING_SIDECAR"] = "0"

    def run(command: str, **extra: str) -> str:
        proc = subprocess.run([sys.executable, "-c", code, command], env={**env, **extra}, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    default = subprocess.run([sys.executable, "-c", "import numpy; print(numpy._core.multiarray._get_madvise_hugepage())"],
                             env=env, capture_output=True, text=True, timeout=120).stdout.strip()  # fmt: skip
    assert run("merge") == "1 False"
    assert run("evaluate") == f"None {default}"  # numpy's own default (on where the kernel has huge pages)
    assert run("merge", NUMPY_MADVISE_HUGEPAGE="1", OPENBLAS_NUM_THREADS="2") == "2 True"

"""bench/merge.py stays runnable: tiny models give one JSON line, and on them our outputs equal mergekit's
(task_arithmetic bit for bit; ties except at top-k ties); the K-candidate pass (task_arithmetic and ties),
ties' retrain (decisions remembered; its output equal to deciding) and the cold start are measured, with
the first merge of the inputs and the output floor. No speed assertions."""

from tests.helpers import run_bench

TINY = ["--hidden", "64", "--intermediate", "176", "--layers", "2", "--heads", "4", "--vocab", "500"]


def test_bench_merge_prints_one_json_line_and_outputs_agree(monkeypatch):
    # dare's drop is compared with mergekit's in tests/test_merge_methods.py; here the bench's plumbing
    monkeypatch.setenv("FINMERGE_FUSED", "1")  # tiny models: the kernels, whose decisions a retrain remembers
    res = run_bench(
        "merge.py", *TINY, "--methods", "task_arithmetic", "ties", "--candidates", "2", "--repeats", "1"
    )
    assert res["bench"] == "merge" and res["params_per_model"] > 0 and res["read_gb_per_s"] > 0
    assert set(res["methods"]) == {"task_arithmetic", "ties"}
    for row in res["methods"].values():
        for tool in ("ours", "mergekit"):
            assert (
                row[tool]["s"] > 0
                and row[tool]["anon_rss_mb"] > 0
                and 0 < row[tool]["share_of_read_bandwidth"] <= 1
            )
        assert row["equality"]["missing"] == []
    assert res["methods"]["task_arithmetic"]["equality"]["identical_share"] == 1.0
    assert res["methods"]["ties"]["equality"]["identical_share"] > 0.99
    # whole commands: ours is `finmerge merge` (its pass time from the manifest), mergekit's `mergekit-yaml`
    ta = res["methods"]["task_arithmetic"]["ours"]
    assert 0 < ta["pass_s"] < ta["s"] and 0 < ta["pass_share_of_read_bandwidth"] <= 1
    first = res["methods"]["task_arithmetic"]["ours_first_merge"]  # inputs hashed, then remembered
    assert first["s"] > 0 and res["methods"]["task_arithmetic"]["speedup_first_merge"] > 0
    many = res["candidates_in_one_pass"]
    assert many["k"] == 2 and many["one_pass_s"] > 0 and many["k_pass_s"] > 0 and many["ratio"] > 0
    for how in ("page_cache", "direct"):  # writing and hashing the outputs, the way mergekit does and ours
        assert 0 < many[f"output_floor_one_{how}_s"] and 0 < many[f"output_floor_k_{how}_s"]
    assert many["k_pass_vs_its_direct_output_floor"] > 0
    ties = res["methods"]["ties"]  # a retrain remembers base → instruct's decisions, a repeat both vectors'
    assert ties["ours"]["decisions_remembered"] == 0  # the figure compared with mergekit decides everything
    remembered = ties["ours_retrain"]["decisions_remembered"]
    assert remembered > 0 and ties["ours_repeat"]["decisions_remembered"] == 2 * remembered
    assert ties["ours_retrain"]["identical_to_deciding"] is True
    assert ties["ours_retrain"]["vs_task_arithmetic"] > 0 and ties["ours_repeat"]["vs_task_arithmetic"] > 0
    assert many["ties"]["one_pass_s"] > 0 and many["ties"]["k_pass_s"] > 0  # decisions shared by the K
    cold = res["cold_start"]
    assert cold["merge_command_s"] > cold["help_s"] > 0 and cold["import_torch_s"] > 0


def test_bench_merge_on_fp16_models():
    """`--dtype float16`: fp16 models and outputs on both sides; task_arithmetic still equals mergekit's."""
    res = run_bench(
        "merge.py", *TINY, "--dtype", "float16", "--methods", "task_arithmetic", "--candidates", "0",
        "--no-cold-start", "--repeats", "1",
    )  # fmt: skip
    assert res["dtype"] == "float16"
    row = res["methods"]["task_arithmetic"]
    assert row["equality"] == {"identical_share": 1.0, "max_diff_ulps": 0.0, "missing": []}
    assert row["ours"]["s"] > 0 and row["mergekit"]["s"] > 0

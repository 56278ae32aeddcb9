"""Strict inputs: duplicate YAML keys, --set values typed by their field, unknown keys in mergekit YAMLs and
merge recipes, and `finmerge merge --config` files read through mergekit_compat.load_merge_file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from finmerge.config import ConfigError, MergeConfig, load_config, read_yaml
from finmerge.core import storage
from finmerge.merge import mergekit as mergekit_compat
from finmerge.merge.mergekit import from_mergekit, load_merge_file

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


MERGEKIT = """
merge_method: ties
base_model: /m/base
models:
  - model: /m/instruct
    parameters:
      weight: 1.0
      density: 0.5
  - model: /m/cpt
    parameters:
      weight: 0.7
      density: 0.3
parameters:
  normalize: true
  int8_mask: true
  lambda: 1.0
dtype: float32
out_dtype: bfloat16
tokenizer:
  source: /m/cpt
"""

RECIPE = """
finmerge_version: 0.1.0
inputs:
  base: /m/base
  instruct: /m/instruct
  domain: /m/cpt
input_digests:
  base: abc
  instruct: def
  domain: ghi
merge:
  method: dare_ties
  alpha: 0.9
  beta: 0.6
  seed: 3
resolved:
  output_dtype: bfloat16
  compute_dtype: float32
  coefficients: {alpha: 0.9}
  vocab: {base: 10}
"""


# -- 1. duplicate keys and syntax errors -----------------------------------------------------------------
def test_read_yaml_rejects_a_duplicate_key_naming_file_line_and_dotted_key(tmp_path):
    top = _write(tmp_path, "top.yaml", "name: a\nmerge: {alpha: 1}\nname: b\n")
    with pytest.raises(ConfigError, match=r"top\.yaml: .*line 3.*duplicate key 'name' \(first at line 1\)"):
        read_yaml(top)
    nested = _write(
        tmp_path, "nested.yaml", "models:\n  - model: a\n    parameters: {weight: 1, weight: 2}\n"
    )
    with pytest.raises(ConfigError, match=r"nested\.yaml: .*line 3.*'models\[0\]\.parameters\.weight'"):
        read_yaml(nested)


def test_read_yaml_keeps_yaml_merge_keys_and_reports_syntax_errors(tmp_path):
    anchors = _write(tmp_path, "anchors.yaml", "a: &x {k: 1, j: 2}\nb:\n  <<: *x\n  k: 3\n")
    assert read_yaml(anchors) == {
        "a": {"k": 1, "j": 2},
        "b": {"k": 3, "j": 2},
    }  # an override, not a duplicate
    bad = _write(tmp_path, "bad.yaml", "merge:\n  alpha: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line \d+, column \d+: "):
        read_yaml(bad)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config"):
        read_yaml(tmp_path / "missing.yaml")


def test_a_duplicate_section_in_a_pipeline_config_is_an_error_not_a_silent_drop(tmp_path):
    text = (ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8") + "merge:\n  alpha: 0.3\n"
    cfg = _write(tmp_path, "dup.yaml", text)
    with pytest.raises(ConfigError, match=r"dup\.yaml: .*duplicate key 'merge' \(first at line \d+\)"):
        load_config(cfg)
    # single line: the message is one line, as every ConfigError
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert "\n" not in str(info.value)


# -- 2. --set values typed by the field they set ---------------------------------------------------------
def test_set_keeps_raw_strings_for_string_fields():
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [
            "corpus.ingest.edinet.start=2024-06-17",  # YAML would make a date
            "name=no",  # YAML 1.1 would make False
            "tracking.experiment=on",  # ... and True
            "pretrain.precision=no",  # a Literal of strings
            "models.base=1e3",
            "models.instruct=0x10",  # str | None: raw too
            "corpus.ingest.edinet.doc_types=[030, 120]",  # list: parsed as YAML, then the field's validator
        ],
    )
    assert cfg.corpus.ingest.edinet.start == "2024-06-17"
    assert cfg.name == "no" and cfg.tracking.experiment == "on" and cfg.pretrain.precision == "no"
    assert cfg.models.base == "1e3" and cfg.models.instruct == "0x10"
    assert cfg.corpus.ingest.edinet.doc_types == ["030", "120"]


def test_set_still_parses_yaml_for_other_fields_and_null_unsets_an_optional_string():
    cfg = load_config(
        None,
        [
            "merge.alpha=0.25",
            "merge.normalize=yes",
            "pretrain.max_steps=7",
            "corpus.ingest.sources=[a, b]",
            "tracking.uri=null",
            "merge.method=ties",
        ],
    )
    assert cfg.merge.alpha == 0.25 and cfg.merge.normalize is True and cfg.pretrain.max_steps == 7
    assert cfg.corpus.ingest.sources == ["a", "b"] and cfg.tracking.uri is None
    assert cfg.merge.method == "ties"
    with pytest.raises(ConfigError, match=r"corpus\.ingest\.edinet\.strat"):
        load_config(None, ["corpus.ingest.edinet.strat=2024-06-17"])
    with pytest.raises(ConfigError, match=r"merge\.alpha: expected a number, got 'no'"):
        load_config(None, ["merge.alpha=no"])  # pydantic alone would read it as 0.0
    with pytest.raises(ConfigError, match=r"pretrain\.max_steps: expected a number, got 'on'"):
        load_config(None, ["pretrain.max_steps=on"])
    with pytest.raises(ConfigError, match=r"duplicate key 'a'"):
        load_config(None, ["merge={a: 1, a: 2}"])


def test_pretrain_seq_len_is_refused_and_points_to_its_one_owner(tmp_path):
    """The block length belongs to tokenize: pretrain trains on what its tokens folder was packed with."""
    hint = r"pretrain\.seq_len: Extra inputs are not permitted \(set tokenize\.seq_len"
    with pytest.raises(ConfigError, match=r"old\.yaml: " + hint):
        load_config(_write(tmp_path, "old.yaml", "pretrain:\n  seq_len: 2048\n"))
    with pytest.raises(ConfigError, match=hint):
        load_config(None, ["pretrain.seq_len=2048"])
    assert load_config(None, ["tokenize.seq_len=2048"]).tokenize.seq_len == 2048


# -- 3. unknown keys in a mergekit YAML or a merge recipe ------------------------------------------------
def test_a_complete_mergekit_yaml_and_recipe_are_accepted(tmp_path):
    cfg, m, uris = load_merge_file(_write(tmp_path, "mk.yaml", MERGEKIT), [])
    assert uris == {"base": "/m/base", "instruct": "/m/instruct", "domain": "/m/cpt"}
    assert (m.method, m.alpha, m.beta, m.density_instruct, m.density_domain, m.dtype, m.normalize) == (
        "ties", 1.0, 0.7, 0.5, 0.3, "bfloat16", True)  # fmt: skip
    assert cfg.merge == m
    _, r, uris = load_merge_file(_write(tmp_path, "recipe.yaml", RECIPE), [])
    assert (r.method, r.alpha, r.beta, r.seed) == ("dare_ties", 0.9, 0.6, 3) and uris["domain"] == "/m/cpt"


# (file, text replaced, replacement, the error it must give)
TYPOS = [
    ("mk", "dtype: float32", "dtpye: float32", r"dtpye: unknown key \(did you mean 'dtype'\?\)"),
    ("mk", "    parameters:\n      weight: 1.0", "    paramters:\n      weight: 1.0", r"models\[0\]\.paramters: unknown"),
    ("mk", "      weight: 0.7", "      wieght: 0.7", r"models\[1\]\.parameters\.wieght: unknown key .*'weight'"),
    ("mk", "  lambda: 1.0", "  lamda: 1.0", r"parameters\.lamda: unknown key"),
    ("mk", "  lambda: 1.0", "  t: 0.5", r"parameters\.t: unknown key"),  # not a ties parameter
    ("mk", "      density: 0.3", "      normalize: true", r"models\[1\]\.parameters\.normalize: a shared parameter"),
    ("mk", "  - model: /m/cpt", "  - model: /m/cpt\n    wieght: 1", r"models\[1\]\.wieght: unknown key"),
    ("mk", "  source: /m/cpt", "  sorce: /m/cpt", r"tokenizer\.sorce: unknown key"),
    ("mk", "  source: /m/cpt", "  source: /m/cpt\n  pad_to_multiple_of: 64", r"tokenizer\.pad_to_multiple_of: not supported"),
    ("mk", "dtype: float32", "dtype: float32\nchat_template: chatml", r"chat_template: not supported"),
    ("mk", "dtype: float32", "dtype: float32\nslices: []", r"slices.*not supported"),
    ("recipe", "merge:\n", "merg:\n  method: ties\nmerge:\n", r"merg: unknown key"),
    ("recipe", "  base: /m/base", "  bse: /m/base", r"inputs\.bse: unknown key"),
    ("recipe", "  alpha: 0.9", "  alpah: 0.9", r"merge\.alpah: Extra inputs are not permitted"),
    ("recipe", "  seed: 3", "  seed: three", r"merge\.seed: Input should be a valid integer"),
    ("recipe", "  vocab: {base: 10}", "  vocab: {base: 10}\n  extra: 1", r"resolved\.extra: unknown key"),
    ("recipe", "  base: abc", "  bsae: abc", r"input_digests\.bsae: unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "old", "new", "why"), TYPOS)
def test_typos_in_a_mergekit_yaml_or_a_recipe_are_errors_naming_the_dotted_key(tmp_path, doc, old, new, why):
    text = {"mk": MERGEKIT, "recipe": RECIPE}[doc]
    assert old in text
    path = _write(tmp_path, f"{doc}.yaml", text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=rf"{doc}\.yaml: " + why):
        load_merge_file(path, [])


def test_slerp_keys_per_model_and_in_filter_items(tmp_path):
    doc = {"merge_method": "slerp", "base_model": "/i", "models": [{"model": "/i"}, {"model": "/c"}],
           "parameters": {"t": [{"filter": "self_attn", "value": 0.2}, {"filter": "*", "value": 0.6}]}}  # fmt: skip
    m, roles = from_mergekit(doc)
    assert m.t == 0.6 and len(m.rules) == 1 and roles == {"base": "/i", "instruct": "/i", "domain": "/c"}
    typo = {**doc, "parameters": {"t": [{"fliter": "self_attn", "value": 0.2}, {"value": 0.6}]}}
    with pytest.raises(
        ConfigError, match=r"parameters\.t\[0\]\.fliter: unknown key \(did you mean 'filter'\?\)"
    ):
        from_mergekit(typo)
    per_model = {**doc, "models": [{"model": "/i"}, {"model": "/c", "parameters": {"weight": 0.5}}]}
    with pytest.raises(ConfigError, match=r"models\[1\]\.parameters\.weight: .*slerp takes no per-model"):
        from_mergekit(per_model)


def test_the_recipe_tasks_merge_writes_is_read_back(tmp_path):
    """The recipe schema checked here is the one finmerge.merge.execute writes (keeps the two in step)."""
    from finmerge.merge.execute import _recipe

    cfg = MergeConfig(method="ties", alpha=0.8, density=0.4, rules=[{"pattern": "norm", "source": "base"}])
    uris = {"base": str(tmp_path / "b"), "instruct": str(tmp_path / "i"), "domain": str(tmp_path / "d")}
    summary = {"inputs": {r: {"manifest_digest": "x" * 8} for r in uris}, "output_dtype": "float32",
               "compute_dtype": "float32", "coefficients": {"alpha": 0.8}, "vocab": {"base": 400}}  # fmt: skip
    path = tmp_path / "merge_recipe.yaml"
    path.write_text(_recipe(cfg, uris, summary), encoding="utf-8")
    _, m, got = load_merge_file(path, [])
    assert m == cfg and got == {r: storage.normalize(u) for r, u in uris.items()}
    assert mergekit_compat.load_recipe(path)[0] == cfg


# -- 4. load_merge_file: what `finmerge merge --config FILE --set …` reads ------------------------------
def test_set_merge_applies_on_top_of_a_mergekit_yaml_and_a_recipe(tmp_path):
    mk = _write(tmp_path, "mk.yaml", MERGEKIT)
    sets = ["merge.alpha=0.25", "merge.density_domain=0.9", f"storage.staging_dir={tmp_path / 'st'}",
            "tracking.experiment=no"]  # fmt: skip
    cfg, m, uris = load_merge_file(mk, sets)
    assert (m.alpha, m.beta, m.density_domain, m.method) == (0.25, 0.7, 0.9, "ties")  # the rest from the file
    assert cfg.merge == m and cfg.storage.staging_dir == str(tmp_path / "st")
    assert cfg.tracking.experiment == "no" and uris["instruct"] == "/m/instruct"
    _, r, _ = load_merge_file(_write(tmp_path, "recipe.yaml", RECIPE), ["merge.beta=0.1", "merge.seed=9"])
    assert (r.method, r.alpha, r.beta, r.seed) == ("dare_ties", 0.9, 0.1, 9)
    with pytest.raises(ConfigError, match=r"mk\.yaml with --set: merge\.alhpa: Extra inputs"):
        load_merge_file(mk, ["merge.alhpa=0.5"])
    with pytest.raises(ConfigError, match=r"--set: storage\.urii: Extra inputs"):
        load_merge_file(mk, ["storage.urii=/x"])


def test_load_merge_file_with_a_pipeline_config_or_none(tmp_path):
    cfg, m, uris = load_merge_file(ROOT / "configs" / "demo.yaml", ["merge.alpha=0.5", "name=off"])
    assert uris == {} and m == cfg.merge and m.alpha == 0.5 and cfg.name == "off"
    cfg, m, uris = load_merge_file(None, ["merge.method=slerp"])
    assert uris == {} and m.method == "slerp"
    dup = _write(tmp_path, "mk.yaml", MERGEKIT + "merge_method: linear\n")
    with pytest.raises(ConfigError, match=r"mk\.yaml: .*duplicate key 'merge_method'"):
        load_merge_file(dup, [])
    with pytest.raises(ConfigError, match=r"mk\.yaml: .*duplicate key 'merge_method'"):
        mergekit_compat.load(dup)

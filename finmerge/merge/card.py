"""The texts written beside the merged weights: ``merge_recipe.yaml`` (reproduces the merge) and the model
card ``README.md`` (recipe, formula of the method, inputs with digests, vocab policy, output, warnings)."""

from __future__ import annotations

import json

import yaml

import finmerge
from finmerge.config import MergeConfig
from finmerge.core import storage
from finmerge.merge.method_registry import METHODS, ROLES
from finmerge.models import card
from finmerge.models.card import table


def recipe_yaml(cfg: MergeConfig, uris: dict, summary: dict) -> str:
    recipe = {
        "finmerge_version": finmerge.__version__,
        "inputs": {r: storage.normalize(uris[r]) for r in ROLES},
        "input_digests": {
            r: summary["inputs"][r].get("manifest_digest") or summary["inputs"][r].get("shards")
            for r in ROLES
        },
        "merge": cfg.model_dump(mode="json", exclude={"sweep"}),  # the sweep chose it
        "resolved": {
            "output_dtype": summary["output_dtype"],
            "compute_dtype": summary["compute_dtype"],
            "coefficients": summary["coefficients"],
            "vocab": summary["vocab"],
        },
    }
    head = (
        "# finmerge merge recipe. Reproduce with:\n"
        "#   from finmerge.merge.execute import merge_from_recipe\n"
        "#   merge_from_recipe('merge_recipe.yaml', out_uri, staging_dir)\n"
        "# or merge_models(inputs.base, inputs.instruct, inputs.domain, out_uri, MergeConfig(**merge), staging_dir)\n"
    )
    return head + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def model_card(cfg: MergeConfig, s: dict) -> str:
    """The merged model's card, written by the one model-card writer (:mod:`finmerge.models.card`). Nothing
    in it names the output folder: the same merge written elsewhere has the same folder digest."""
    a, b = cfg.alpha, cfg.beta
    excluded = ", ".join(f"`{e}`" for e in cfg.exclude) or "none"
    recipe = "\n".join([
        f"- method: `{cfg.method}`, α = {a:g}, β = {b:g}",
        f"- formula: {METHODS[cfg.method].formula(cfg)}",
        f"- computed in {s['compute_dtype']}, rounded once to {s['output_dtype']}",
        f"- parameters: {json.dumps(s['parameters'], ensure_ascii=False)}",
        f"- excluded (taken from the domain model unchanged): {excluded}",
        f"- tool: finmerge {s['finmerge_version']}; full recipe in `merge_recipe.yaml`",
    ])  # fmt: skip
    rows = []
    for r in ROLES:
        inp = s["inputs"][r]
        if inp.get("manifest_digest"):
            digest = f"manifest {inp['manifest_digest']}"
        else:
            digest = "<br>".join(f"{k}: {v}" for k, v in (inp.get("shards") or {}).items()) or "not computed"
        rows.append((r, f"`{inp['uri']}`", inp["dtype"], inp["vocab_size"], digest))
    v, c = s["vocab"], s["counts"]
    vocab = "\n".join([
        f"- vocab sizes: base {v['base']}, instruct {v['instruct']}, domain {v['domain']} → output {v['output']}",
        (
            f"- rows [0, {v['shared']}) merged; rows [{v['shared']}, {v['output']}) taken from the domain model "
            f"unchanged ({v['rows_domain_only']} row(s)); no row dropped"
            if v["rows_domain_only"]
            else "- same vocab in all three models: every row merged"
        ),
        "- tokenizer: from the domain model; chat template and generation_config.json: from the instruct model",
    ])  # fmt: skip
    output = (
        f"- {c['parameters']:,} parameters in {c['shards']} shard(s); {c['tensors_merged']} tensors merged, "
        f"{c['tensors_copied']} copied (non-float), {c['tensors_excluded']} excluded\n"
        f"- max |Δ| vs domain: {s['max_abs_delta_vs_cpt']:.4g}; vs instruct: {s['max_abs_delta_vs_inst']:.4g} "
        "(per tensor in `merge_report.json`)\n\n" + table(s["shards"].items(), header=("shard", "sha256"))
    )
    sections = [
        ("Recipe", recipe),
        ("Inputs", table(rows, header=("role", "URI", "dtype", "vocab", "digest"))),
        ("Vocab and tokenizer", vocab),
        ("Output", output),
    ]
    if s["warnings"]:
        sections.append(("Warnings", "\n".join(f"- {w}" for w in s["warnings"])))
    intro = (
        "A finance LLM built by finmerge: the instruction vector of an instruct model and the domain vector of a "
        "continually pretrained (CPT) model, added to their common base model."
    )
    return card.model_card(
        f"finmerge merged model ({cfg.method})",
        body=intro,
        sections=sections,
        tags=("finmerge", "merge", cfg.method.replace("_", "-")),
    )

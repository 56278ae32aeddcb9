"""The record a shared merge pass leaves in its own folder: which candidate folders it wrote, with digests."""

from __future__ import annotations

import json

from finmerge.core import storage


def write_pass_record(results: list[dict], out_uri: str, staging_dir: str, overwrite: bool = False) -> dict:
    """``pass.json`` listing every output (uri, digest, metrics) of one :func:`merge_models_many` call."""
    seconds = max((r.get("metrics", {}).get("merge/seconds", 0.0) for r in results), default=0.0)
    with storage.output_folder(out_uri, staging_dir, meta={"kind": "merge-pass"}, stage="merge-pass",
                               overwrite=overwrite) as out:  # fmt: skip
        record = [{"uri": r["uri"], "digest": r["digest"], "metrics": r.get("metrics", {})} for r in results]
        (out.path / "pass.json").write_text(json.dumps({"outputs": record}, indent=2) + "\n")
        out.meta["outputs"] = [r["uri"] for r in results]
        out.meta["metrics"] = {"merge/candidates_in_pass": float(len(results)), "merge/seconds": seconds}
        out.meta["artifacts"] = ["pass.json"]
    return out.result()

"""Promotion through the MLflow registry: challenger → champion only through the gates, and rollback.

Each registered version carries its evaluation metrics (``eval.*``, written by the pipeline) as the metrics
of its MLflow LoggedModel (older versions: on the run it was registered from). :func:`promote` compares the
candidate (default: the ``challenger`` alias) with the current champion under ``registry.gates``; when every
check passes the old champion keeps the ``previous`` alias and the candidate becomes ``champion``. Whatever the outcome, the decision is
recorded as version tags (``finmerge.promotion.*``) and as a Markdown report (returned, and logged as
an MLflow run artifact). :func:`rollback` swaps ``champion`` and ``previous``.

Before an alias moves, the version it will point at is verified: every file of its folder against the digest
recorded at registration (:func:`finmerge.core.integrity.verify_version`). A swapped, truncated, missing or
added file raises :class:`~finmerge.core.integrity.IntegrityError` naming the file and both digests, and the
registry is left as it was. The report and the ``finmerge.promotion.digest`` tag record the digest that was
gated. The aliases move as the promoter account where one is configured (:mod:`finmerge.registry.aliases`).

Both hold the model line's registry lock (:func:`finmerge.core.services.line_lock`, which the runner backs
with a Prefect global concurrency limit of 1) for their read-check-set of the aliases, so racing promotions
run one after the other and the line always ends with one champion and a ``previous`` that was champion
before it.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass

from finmerge.config import PromotionGates, RegistryConfig
from finmerge.core import integrity, services, tracking
from finmerge.registry import aliases
from finmerge.registry.register import version_model_id

EVAL = "eval."


@dataclass
class Check:
    name: str
    candidate: float | None
    champion: float | None
    limit: str
    passed: bool
    reason: str = ""


def _logged_model_metrics(client, model_id: str | None) -> dict[str, float]:
    """The LoggedModel's metrics, the latest value of each key (none when it has none or is gone)."""
    from mlflow.exceptions import MlflowException

    if not model_id:
        return {}
    try:
        logged = client.get_logged_model(model_id)
    except MlflowException:
        return {}
    latest: dict[str, tuple[int, float]] = {}
    for m in sorted(logged.metrics or [], key=lambda m: (m.timestamp, m.step)):
        latest[m.key] = (m.timestamp, float(m.value))
    return {k: v for k, (_, v) in latest.items()}


def _legacy_metrics(client, mv) -> dict[str, float]:
    """Versions registered before LoggedModels: the register run's metrics, else the ``metric.*`` tags."""
    metrics = dict(client.get_run(mv.run_id).data.metrics) if mv.run_id else {}
    if not any(k.startswith(EVAL) for k in metrics):
        metrics = {
            k[len("metric.") :]: float(v) for k, v in (mv.tags or {}).items() if k.startswith("metric.")
        }
    return metrics


def version_metrics(client, name: str, version: str) -> dict[str, float]:
    """The ``eval.*`` metrics a version was registered with (prefix stripped): its LoggedModel's metrics,
    the ones the registry UI shows; for older versions the register run's metrics or ``metric.*`` tags."""
    mv = client.get_model_version(name, version)
    metrics = _logged_model_metrics(client, version_model_id(mv)) or _legacy_metrics(client, mv)
    return {k[len(EVAL) :]: float(v) for k, v in metrics.items() if k.startswith(EVAL)}


def task_scores(metrics: dict[str, float]) -> dict[str, float]:
    """Per harness task its leaderboard score: f1 where present (chabsa), else acc."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "harness" and parts[2] in ("acc", "f1"):
            if parts[2] == "f1" or parts[1] not in out:
                out[parts[1]] = value
    return out


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def check_gates(
    candidate: dict[str, float], champion: dict[str, float] | None, gates: PromotionGates
) -> list[Check]:
    """Every gate as a :class:`Check`. Relative gates need a champion; absolute floors always apply."""
    checks: list[Check] = []
    if champion is not None:
        mine, theirs = task_scores(candidate), task_scores(champion)
        for t, ref in sorted(theirs.items()):
            value = mine.get(t)
            ok = value is not None and value >= ref - gates.max_task_drop
            reason = "" if ok else ("missing on the candidate" if value is None else "dropped too far")
            checks.append(
                Check(f"harness/{t}", value, ref, f">= champion - {gates.max_task_drop:g}", ok, reason)
            )
        if gates.max_ppl_ratio is not None and _finite(champion.get("ppl")):
            value = candidate.get("ppl")
            ok = _finite(value) and value <= champion["ppl"] * gates.max_ppl_ratio
            checks.append(
                Check(
                    "ppl",
                    value,
                    champion["ppl"],
                    f"<= champion x {gates.max_ppl_ratio:g}",
                    ok,
                    "" if ok else "finance perplexity is worse",
                )
            )
    floors = (("chat/adherence", gates.min_chat_adherence), ("judge/overall", gates.min_judge_overall))
    for key, floor in floors:
        if floor is None:
            continue
        value = candidate.get(key)
        ok = _finite(value) and value >= floor
        checks.append(
            Check(
                key,
                value,
                None if champion is None else champion.get(key),
                f">= {floor:g}",
                ok,
                "" if ok else ("not measured" if value is None else "below the floor"),
            )
        )
    return checks


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.4g}"


def report_markdown(
    name: str,
    candidate: str,
    champion: str | None,
    decision: str,
    checks: list[Check],
    digest: str | None = None,
    verified: dict | None = None,
) -> str:
    lines = [
        f"# Promotion of {name} v{candidate}: **{decision}**",
        "",
        f"Champion before: {'v' + champion if champion else 'none'}",
        "",
        f"Candidate digest (registered, evaluated): `{digest or 'not recorded'}`"
        + (f"; its {verified['files']} files verified before the alias moved" if verified else ""),
        "",
        "| check | candidate | champion | rule | result |",
        "|---|---:|---:|---|---|",
    ]
    for c in checks:
        verdict = "pass" if c.passed else f"**fail** ({c.reason})"
        lines.append(f"| {c.name} | {_fmt(c.candidate)} | {_fmt(c.champion)} | {c.limit} | {verdict} |")
    if not checks:
        lines.append("| (no gates apply) | | | | pass |")
    return "\n".join(lines) + "\n"


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


REGISTRY_LOCK_WAIT_S = 600.0  # a promotion waits this long for a racing one to finish


def _under_registry_lock(fn):
    """Run ``fn(name, ...)`` holding model line ``name``'s registry lock (same signature, for Prefect)."""

    @functools.wraps(fn)
    def locked(name: str, **kwargs):
        with services.line_lock("registry", name, wait_s=REGISTRY_LOCK_WAIT_S):
            return fn(name, **kwargs)

    return locked


AWAITING = "awaiting approval"


def approval_markdown(approval: dict) -> str:
    verdict = "approved" if approval.get("approve") else "rejected"
    comment = f": {approval['comment']}" if approval.get("comment") else ""
    return f"\nReview: **{verdict}** by {approval.get('reviewer') or 'unknown'}{comment}\n"


def approval_tags(approval: dict | None) -> dict[str, str]:
    if approval is None:
        return {}
    return {
        "finmerge.approval.decision": "approved"
        if approval.get("approve")
        else ("timed out" if approval.get("timed_out") else "rejected"),
        "finmerge.approval.reviewer": str(approval.get("reviewer") or ""),
        "finmerge.approval.comment": str(approval.get("comment") or "")[:5000],
    }


@_under_registry_lock
def promote(
    name: str,
    *,
    tracking_uri: str,
    registry: RegistryConfig,
    version: str | None = None,
    experiment_id: str | None = None,
    force: bool = False,
    approval: dict | None = None,
    await_approval: bool = False,
) -> dict:
    """Gate ``version`` (default: the new-version alias) against the champion and promote it if it passes.

    ``force`` promotes despite failed checks (recorded as such). With ``await_approval`` a version that
    passes is left where it is (decision "awaiting approval"); the same call again with ``approval``
    (``{"approve", "reviewer", "comment"}``, see :mod:`finmerge.registry.approval`) moves the alias only
    if a person approved. Returns the decision, checks and report.
    """
    client = tracking.client(tracking_uri)
    version = str(version or _alias_version(client, name, registry.new_alias) or "")
    if not version:
        raise ValueError(f"{name}: no version given and no '{registry.new_alias}' alias to promote")
    champion = _alias_version(client, name, registry.champion_alias)
    verified = None
    if champion == version:
        checks: list[Check] = []
        decision = "already champion"
    else:
        cand = version_metrics(client, name, version)
        champ = version_metrics(client, name, champion) if champion else None
        checks = check_gates(cand, champ, registry.gates)
        passed = all(c.passed for c in checks)
        decision = "promoted" if passed else ("forced" if force else "rejected")
        if passed and await_approval:
            decision = AWAITING
        elif passed and approval is not None and not approval.get("approve"):
            decision = "approval timed out" if approval.get("timed_out") else "rejected by reviewer"
        if decision in ("promoted", "forced"):
            verified = integrity.verify_version(client, name, version)  # raises before anything moves
            if champion:
                aliases.set_protected(client, tracking_uri, name, registry.previous_alias, champion)
                client.set_model_version_tag(name, champion, "finmerge.promotion.replaced_by", version)
            aliases.set_protected(client, tracking_uri, name, registry.champion_alias, version)
    digest = client.get_model_version(name, version).tags.get(integrity.DIGEST_TAG)
    report = report_markdown(name, version, champion, decision, checks, digest, verified)
    if approval is not None:
        report += approval_markdown(approval)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tags = {
        "finmerge.promotion.decision": decision,
        "finmerge.promotion.at": stamp,
        "finmerge.promotion.champion_before": champion or "",
        "finmerge.promotion.failed": ",".join(c.name for c in checks if not c.passed),
        "finmerge.promotion.digest": digest or "",
        **approval_tags(approval),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if experiment_id:  # the report as an artifact people can open in the MLflow UI
        run = tracking.Run.start(
            tracking_uri,
            experiment_id,
            f"promote-{name}-v{version}",
            tags={"finmerge.stage": "promote", "finmerge.promotion.decision": decision},
        )
        run.text(report, "promotion.md")
        run.end()
    return {
        "name": name,
        "version": version,
        "decision": decision,
        "champion_before": champion,
        "champion": _alias_version(client, name, registry.champion_alias),
        "digest": digest,
        "verified": verified,
        "checks": [asdict(c) for c in checks],
        "report": report,
    }


@_under_registry_lock
def rollback(name: str, *, tracking_uri: str, registry: RegistryConfig) -> dict:
    """Champion back to the ``previous`` alias (its files verified first); the version rolled back from
    takes ``previous``."""
    client = tracking.client(tracking_uri)
    previous = _alias_version(client, name, registry.previous_alias)
    current = _alias_version(client, name, registry.champion_alias)
    if previous is None:
        raise ValueError(f"{name}: no '{registry.previous_alias}' alias to roll back to")
    verified = integrity.verify_version(client, name, previous)  # raises before anything moves
    aliases.set_protected(client, tracking_uri, name, registry.champion_alias, previous)
    if current is not None:
        aliases.set_protected(client, tracking_uri, name, registry.previous_alias, current)
        client.set_model_version_tag(name, current, "finmerge.promotion.decision", "rolled back")
    client.set_model_version_tag(name, previous, "finmerge.promotion.restored_from", current or "")
    return {"name": name, "champion": previous, "previous": current, "digest": verified["digest"]}

"""Promotion through the registry's gates (optionally waiting for a person), and rollback (tasks: they write
no stage folder)."""

from __future__ import annotations

import re

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from finmerge.config import RegistryConfig
from finmerge.registry.promote import AWAITING, promote, rollback

# never cached: a promotion reads the registry's current state
promote_task = task(promote, name="promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
rollback_task = task(rollback, name="rollback", cache_policy=NO_CACHE)
APPROVAL_POLL_S = 5  # how often the paused flow run asks the API whether it was resumed


class ApprovalInput(RunInput):
    """The form the Prefect UI shows on a paused promotion (Resume → this form)."""

    approve: bool = Field(False, description="Promote this version to champion.")
    reviewer: str = Field(description="Who decided (recorded on the model version).")
    comment: str = Field("", description="Why (recorded on the model version and in the report).")


def gated_promotion(
    name: str,
    *,
    tracking_uri: str,
    registry: RegistryConfig,
    version: str | None = None,
    experiment_id: str | None = None,
    force: bool = False,
    label: str = "promote",
) -> dict:
    """The gates, and with ``registry.require_approval`` a person: call from a flow's body. A version that
    passes is held, its gate report published as a Markdown artifact, and the flow run paused for an
    :class:`ApprovalInput`; the answer (or, after ``approval_timeout_s``, a rejection) decides whether the
    alias moves. ``force`` skips the wait (an operator's explicit decision, recorded as forced)."""
    common = {
        "tracking_uri": tracking_uri,
        "registry": registry,
        "experiment_id": experiment_id,
        "force": force,
    }
    if not registry.require_approval or force:
        return promote_task.with_options(task_run_name=label)(name, version=version, **common)
    held = promote_task.with_options(task_run_name=f"{label}-gates")(
        name, version=version, await_approval=True, **common
    )
    key = re.sub(r"[^a-z0-9-]+", "-", f"{label}-{name}-gates".lower()).strip("-")
    create_markdown_artifact(markdown=held["report"], key=key, description=f"gate report of {name}")
    if held["decision"] != AWAITING:  # failed the gates, or already champion: nothing to ask
        return held
    description = (
        f"{held['report']}\n\nApprove **{name} v{held['version']}** as `{registry.champion_alias}`? "
        f"(rejected automatically after {registry.approval_timeout_s} s)"
    )
    # The wait is a subflow run of its own: the reviewer resumes that run, and when its pause expires Prefect
    # fails it, not the flow that asked (a pipeline run keeps its results and records the timeout).
    asked = await_approval.with_options(flow_run_name=f"approve-{name}-v{held['version']}")
    state = asked(description, registry.approval_timeout_s, return_state=True)
    if state.is_completed():
        approval = state.result()
    else:
        approval = {
            "approve": False,
            "reviewer": "timeout",
            "comment": f"no answer within {registry.approval_timeout_s} s",
            "timed_out": True,
        }
    return promote_task.with_options(task_run_name=label)(
        name, version=held["version"], approval=approval, **common
    )


@flow(name="finmerge-approval", log_prints=True)
def await_approval(description: str, timeout_s: int) -> dict:
    """Pause for a reviewer's :class:`ApprovalInput` (the Prefect UI's Resume form shows ``description``)."""
    form = ApprovalInput.with_initial_data(description=description)
    answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=APPROVAL_POLL_S)
    return {"approve": answer.approve, "reviewer": answer.reviewer, "comment": answer.comment}

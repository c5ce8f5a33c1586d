"""Asking a route's models in turn: each under its own bounded retry policy, the next one when
the previous one gives up (429s, 5xx, timeouts and refused connections after their retries, or
a request the provider rejects). Workflow code: the activity's recorded reply is what a replay
sees, so no model is asked twice for the same turn.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from keel.workflows.contracts import ModelRef, ModelReply, ModelRequest, Route
    from keel.workflows.failures import describe_failure, local_outcome, retry_policy

# The provider's own timeout is enforced by the HTTP client; this is the backstop around it.
ACTIVITY_SLACK = timedelta(seconds=10)


class ModelsExhausted(Exception):
    """Every model of the route gave up; the message says why each one did."""


def model_retry(ref: ModelRef) -> RetryPolicy:
    """The model's own policy. The failures a retry cannot fix (a rejected request, a missing
    key, an unknown or failing scripted model) are raised non-retryable by the activity itself,
    so the policy need not list them: ~90 bytes less history per model call."""
    return retry_policy(ref.retry)


async def ask_route(
    route: Route, request_for: Callable[[ModelRef], ModelRequest]
) -> tuple[ModelReply, ModelRef, list[str]]:
    """The first answer along the route, the model that gave it, and the fallbacks on the way."""
    fallbacks: list[str] = []
    for ref in route.models:
        try:
            # A quick model answers as a local activity: no round trip through the server.
            execute = workflow.execute_local_activity if ref.local else workflow.execute_activity
            asked = execute(
                "keel.model_call",
                request_for(ref),
                result_type=ModelReply,
                start_to_close_timeout=ref.timeout + ACTIVITY_SLACK,
                retry_policy=model_retry(ref),
            )
            reply = await (local_outcome(asked, "keel.model_call") if ref.local else asked)
            return reply, ref, fallbacks
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            fallbacks.append(f"{ref.label}: {describe_failure(err)}")
            workflow.logger.info(f"model {ref.label} gave up, next on the route: {fallbacks[-1]}")
    raise ModelsExhausted("every model of the route gave up: " + "; ".join(fallbacks))

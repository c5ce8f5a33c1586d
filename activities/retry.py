"""Jitter for Temporal's retries: RetryPolicy backs off exponentially but in lockstep, so many
runs failing together (a provider outage) would all retry at the same instants. A failing
attempt asks for its own next delay instead (ApplicationError.next_retry_delay): the policy's
delay for that attempt, times a random factor in [1 - JITTER, 1 + JITTER].

    delay = jittered_delay(activity.info().attempt, activity.info().retry_policy)
"""

from __future__ import annotations

import random
from datetime import timedelta

from temporalio.common import RetryPolicy

JITTER = 0.25  # the delay lands within +-25 % of the policy's own delay


def jittered_delay(
    attempt: int, policy: RetryPolicy | None, rng: random.Random | None = None
) -> timedelta | None:
    """The delay before the attempt after `attempt`, jittered; None when no attempt follows
    (the policy's last attempt) or there is no policy to follow."""
    if policy is None or (policy.maximum_attempts and attempt >= policy.maximum_attempts):
        return None
    initial = policy.initial_interval.total_seconds()
    # Temporal's default cap is 100 x the initial interval.
    cap = (policy.maximum_interval or policy.initial_interval * 100).total_seconds()
    base = min(initial * policy.backoff_coefficient ** (attempt - 1), cap)
    return timedelta(seconds=base * (rng or random).uniform(1 - JITTER, 1 + JITTER))

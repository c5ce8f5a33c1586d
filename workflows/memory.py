"""MemoryHooks: an agent with memory (AgentSpec.memory) starts with what it remembers and
leaves an episode. Before the model's first turn, keel.memory_context gives the current facts
of its scope most relevant to the goal and its newest episodes (bounded in count and bytes);
at the end, keel.memory_episode records the run's outcome (status, summary, files touched)
once, keyed by the run id, so the next run sees what this one did and did not finish.

    await hooks.opening()          # a fresh run of an agent with memory: state.memory_context
    report = await hooks.finish(report)
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from keel.workflows.contracts import RunReport
    from keel.workflows.contracts.memory import EpisodeRequest, MemoryContextRequest
    from keel.workflows.failures import describe_failure
    from keel.workflows.planning import KEEL_ACTIVITY_TIMEOUT, KEEL_RETRY
    from keel.workflows.run_state import RunState


class MemoryHooks:
    def __init__(self, state: RunState) -> None:
        self.state = state

    @property
    def scope(self) -> str | None:
        policy = self.state.agent.memory
        if policy is None or not self.state.agent_from_worker:
            return None  # only the worker's own definition of an agent gives it memory
        return policy.scope or f"agent:{self.state.agent.name}"

    async def opening(self) -> None:
        state, scope = self.state, self.scope
        if scope is None or state.run.carry is not None or state.agent.memory is None:
            return
        context = await workflow.execute_activity(
            "keel.memory_context",
            MemoryContextRequest(scope=scope, goal=state.run.goal, policy=state.agent.memory),
            result_type=str,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )
        state.memory_context = context or None

    async def finish(self, report: RunReport) -> RunReport:
        state, scope = self.state, self.scope
        policy = state.agent.memory
        if scope is None or policy is None or not policy.episodes or report.refused:
            return report
        episode = EpisodeRequest(
            scope=scope,
            run_id=report.run_id,
            agent=report.agent,
            status=report.status,
            summary=report.summary,
            reason=report.reason,
            files_touched=report.files_touched,
            at=workflow.now(),
        )
        try:
            await workflow.execute_activity(
                "keel.memory_episode",
                episode,
                start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
                retry_policy=KEEL_RETRY,
            )
        except ActivityError as err:  # the run's outcome stands; the next run misses its episode
            state.log(f"episode not recorded: {describe_failure(err)}")
        return report

"""The OpenAI Agents SDK through temporalio's integration, doing what bench/peers.py asks of
Keel: an activity as the tool; the fake model (bench/peer_models.py) calls it until the
conversation holds N results.

A module of its own: the workflow sandbox re-imports it, under the OpenAI Agents plugin only.
Needs the `peers` extra (`pip install -e '.[peers]'`).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from agents import Agent as OpenAIAgent
    from agents import Runner
    from temporalio.contrib.openai_agents.workflow import activity_as_tool

TOOL_TIMEOUT = timedelta(seconds=30)


@activity.defn(name="peer_noop")
async def peer_noop(i: int) -> int:
    """Returns its argument: the cheapest possible tool."""
    return i


@workflow.defn(name="PeerOpenAIAgents")
class PeerOpenAIAgents:
    @workflow.run
    async def run(self, n: int) -> str:
        agent = OpenAIAgent(
            name="peer_openai",
            instructions="Call the tool as many times as asked.",
            tools=[activity_as_tool(peer_noop, start_to_close_timeout=TOOL_TIMEOUT)],
        )
        result = await Runner.run(agent, f"call the tool {n} times", max_turns=n + 5)
        return str(result.final_output)

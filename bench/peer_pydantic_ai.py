"""Pydantic AI, doing what bench/peers.py asks of Keel: an `Agent` with the `TemporalDurability`
capability and a `FunctionModel` that calls `noop` until the conversation holds N results.

A module of its own: the workflow sandbox re-imports it, under Pydantic AI's plugin only.
Needs the `peers` extra (`pip install -e '.[peers]'`).
"""

from __future__ import annotations

import re

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.temporal import TemporalDurability
    from pydantic_ai.messages import ModelMessage, TextPart, ToolCallPart, ToolReturnPart
    from pydantic_ai.messages import ModelResponse as PaiResponse
    from pydantic_ai.models.function import AgentInfo, FunctionModel
    from pydantic_ai.usage import UsageLimits


def calls_wanted(prompt: str) -> int:
    """The prompt is 'call the tool N times'."""
    return int(re.search(r"(\d+)", prompt).group(1))  # type: ignore[union-attr]


def pai_model(messages: list[ModelMessage], info: AgentInfo) -> PaiResponse:
    prompt = next(
        str(part.content)
        for message in messages
        for part in message.parts
        if part.part_kind == "user-prompt"
    )
    done = sum(isinstance(part, ToolReturnPart) for message in messages for part in message.parts)
    if done < calls_wanted(prompt):
        return PaiResponse(parts=[ToolCallPart("noop", {"i": done + 1}, tool_call_id=f"c{done}")])
    return PaiResponse(parts=[TextPart("done")])


def noop(i: int) -> int:
    """Returns its argument: the cheapest possible tool."""
    return i


pai_agent = Agent(
    FunctionModel(pai_model),
    name="peer_pai",
    tools=[noop],
    capabilities=[TemporalDurability()],
)


@workflow.defn(name="PeerPydanticAI")
class PeerPydanticAI:
    @workflow.run
    async def run(self, n: int) -> str:
        # The default request limit (50) would stop the run; N calls need N + 1 requests.
        limits = UsageLimits(request_limit=n + 5)
        result = await pai_agent.run(f"call the tool {n} times", usage_limits=limits)
        return str(result.output)

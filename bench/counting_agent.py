"""An offline agent for the benchmarks: its scripted model reads N from the goal ("... N") and
calls one tool N times, one call a turn, then finishes. The same deterministic model for every
step-by-step benchmark (react_history.py, peers.py)."""

from __future__ import annotations

import json

from keel.activities import scripted_model
from keel.activities.models.scripted import ScriptedModel
from keel.shared.context_view import results_seen
from keel.workflows.contracts import (
    ActingPolicy,
    AgentSpec,
    Budget,
    Grant,
    ModelRef,
    ModelReply,
    ModelRequest,
    Route,
    Routes,
    ToolCallRequest,
    Usage,
)


def counting_agent(name: str, tool_name: str) -> tuple[ScriptedModel, AgentSpec]:
    """The scripted model (register it in the worker's catalog) and the agent routed to it."""

    @scripted_model(name)
    def next_call(request: ModelRequest) -> ModelReply:
        goal = next(m.content for m in request.messages if m.role == "user")
        n = int(goal.split()[-1])
        done = results_seen(request.messages)  # trimmed and not shown ones count too
        call, args = (tool_name, {"i": done + 1}) if done < n else ("finish", {"summary": "done"})
        request_ = ToolCallRequest(id=f"c{done + 1}", name=call, arguments=json.dumps(args))
        return ModelReply(tool_calls=(request_,), usage=Usage(input_tokens=100, output_tokens=10))

    agent = AgentSpec(
        name=name,
        tools=(tool_name,),
        routes=Routes(act=Route(models=(ModelRef(provider="scripted", model=name),))),
        budget=Budget(max_repeats=None),
        # As many turns as any run may ask for; each run narrows it to its own n + 5.
        loop=ActingPolicy(max_turns=100_000),
        grants=(Grant(scope="*"),),
        unverified_ok=True,  # a benchmark of steps: nothing to verify
    )
    return next_call, agent

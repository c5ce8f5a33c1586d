"""The offline scripted model: a deterministic function stands in for an LLM's answer.

    @scripted_planner("ledger-clerk")
    def plan_payments(goal: str) -> PlanSpec: ...

It runs inside the model activity like any provider, so a replay reads the recorded plan from
history and never calls it again. It is how the examples and tests run with no API key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from keel.workflows.contracts import ModelReply, ModelRequest, PlanSpec


@dataclass(frozen=True)
class ScriptedPlanner:
    agent: str
    plan: Callable[[str], PlanSpec]


def scripted_planner(agent: str) -> Callable[[Callable[[str], PlanSpec]], ScriptedPlanner]:
    """Declare the scripted model's answer for `agent`: a function from goal to plan."""

    def wrap(fn: Callable[[str], PlanSpec]) -> ScriptedPlanner:
        return ScriptedPlanner(agent=agent, plan=fn)

    return wrap


@dataclass(frozen=True)
class ScriptedModel:
    name: str
    answer: Callable[[ModelRequest], ModelReply]


def scripted_model(name: str) -> Callable[[Callable[[ModelRequest], ModelReply]], ScriptedModel]:
    """Declare an offline model for agents that act step by step: a function from the request
    (the context built from plan state) to the reply. Route to it with
    ModelRef(provider="scripted", model=name)."""

    def wrap(fn: Callable[[ModelRequest], ModelReply]) -> ScriptedModel:
        return ScriptedModel(name=name, answer=fn)

    return wrap

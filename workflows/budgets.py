"""BudgetKeeper: every tool and model call is admitted against the run's budget before it
runs; a spent budget stops the run, or waits for a human to extend it (on_budget="ask").

    await budget.admit("tool", key)   # returns when the call may run; raises Unwind if not

`extended` is the only way a budget grows: a limit is a finite positive number, and an
extension only raises a limit the budget already has.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from keel.workflows.contracts import NARROWABLE_LIMITS, Budget
    from keel.workflows.failures import Unwind
    from keel.workflows.gate import HumanGate
    from keel.workflows.loop import budget_problem, budget_warnings
    from keel.workflows.run_state import RunState

EXTENDABLE_LIMITS = (*NARROWABLE_LIMITS, "max_repeats", "max_malformed", "max_denials")


class BudgetKeeper:
    def __init__(self, state: RunState, gate: HumanGate, repeats: Counter[str]) -> None:
        self.state = state
        self.gate = gate
        self.repeats = repeats  # how often each call (tool and arguments) was made lately
        self.warned: set[str] = set()  # limits already warned of in the live stream

    async def admit(self, next_call: Literal["model", "tool"], key: str | None = None) -> None:
        """Return when the call may run; raise Unwind, or wait for a human to extend the
        budget, when it may not."""
        report, agent = self.state.report, self.state.agent
        while True:
            elapsed = workflow.now() - workflow.info().start_time
            problem = budget_problem(
                report.budget,
                report.used,
                elapsed,
                next_call=next_call,
                repeats=self.repeats,
                key=key,
            )
            if problem is None:
                self._warn(elapsed)
                return
            self.state.log(f"budget check: {problem}")
            if agent.on_budget != "ask":
                raise Unwind(f"budget exhausted: {problem}")
            decision = await self.gate.ask(
                kind="escalation",
                step=report.step_total + 1,
                tool="budget",
                args=report.budget.model_dump(mode="json", exclude_none=True),
                reason=f"budget exhausted: {problem}",
                choices=["extend", "abort"],
                policy=agent.escalation,
            )
            if decision.choice != "extend" or decision.args is None:
                raise Unwind(f"budget exhausted: {problem}; {decision.choice}: {decision.reason}")
            report.budget = extended(report.budget, decision.args)
            if problem.startswith("max_repeats"):
                self.repeats[key or ""] = 0  # the human says the repetition is intended

    def _warn(self, elapsed: Any) -> None:
        report = self.state.report
        for name, text in budget_warnings(report.budget, report.used, elapsed).items():
            if name not in self.warned:
                self.warned.add(name)
                self.state.events.add("budget_warning", f"budget: {text}", outcome=name)


def extended(budget: Budget, changes: dict[str, Any]) -> Budget:
    """The budget with some limits raised. A limit is a finite positive number and an extension
    only raises one the budget has: null, infinity, NaN, a lower value or an unknown name is
    refused (ApplicationError), so no decision can turn a limit off."""
    problems = [f"{name!r} is not a limit" for name in changes if name not in EXTENDABLE_LIMITS]
    if not problems:
        try:
            raised = Budget.model_validate({**budget.model_dump(), **changes})
        except ValidationError as err:
            problems.append(err.errors()[0]["msg"])
        else:
            problems = [p for name in changes if (p := _not_raised(name, budget, raised))]
    if problems:
        raise ApplicationError(
            f"the budget cannot be extended that way: {'; '.join(problems)}",
            type="InvalidBudget",
            non_retryable=True,
        )
    return raised


def _not_raised(name: str, old: Budget, new: Budget) -> str | None:
    before, after = getattr(old, name), getattr(new, name)
    if after is None:
        return f"{name} cannot be removed (null)"
    if isinstance(after, float) and not math.isfinite(after):
        return f"{name} must be a finite number, not {after}"
    if before is None:
        return f"{name} has no limit to extend"
    if after < before:
        return f"{name} can only be raised ({after} is below {before})"
    return None

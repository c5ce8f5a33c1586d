"""The parts of AgentWorkflow that act step by step and keep budgets: a model call chooses each
tool call, its answer is checked before anything runs, and every call is paid for in advance.

A mixin so agent.py stays readable; it relies on AgentWorkflow's state (`_run`, `_report`,
`_tools`, `_gate`) and steps (`_run_step`, `_log`). Everything here is deterministic: the
context is built from plan state, the budgets are checked against workflow time.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.contracts import (
        PROGRESS_KEPT,
        AcceptanceState,
        AgentRunInput,
        Decision,
        PlanSpec,
        StepState,
        ToolSpec,
    )
    from workflows.loop import (
        PLAN_SCHEMA,
        VERDICT_SCHEMA,
        Action,
        PlanDraft,
        Verdict,
        budget_problem,
        call_key,
        parse_actions,
        plan_prompt,
        review_prompt,
        single_call,
        system_prompt,
    )
    from workflows.loop import tool_schemas as loop_tool_schemas
    from workflows.metrics import count
    from workflows.model_contracts import (
        ASK_HUMAN,
        NARROWABLE_LIMITS,
        Budget,
        Message,
        ModelCallRecord,
        ModelRef,
        ModelReply,
        ModelRequest,
        StepKind,
        ToolSchema,
        preamble_ref,
    )
    from workflows.routing import ModelsExhausted, ask_route
    from workflows.tracing import annotate, span

if TYPE_CHECKING:
    from workflows.gate import HumanGate


class Stop(Exception):
    """The run must stop here and unwind; the message is the reason (AgentWorkflow maps it)."""


class ActingMixin:
    _run: AgentRunInput
    _gate: HumanGate
    _turns: list[Message]
    _repeats: Counter[str]
    _threads: dict[str, tuple[str | None, int]]
    _preambles: set[str]
    _turn: int

    # --- budgets -----------------------------------------------------------------------------

    async def _pay(self, next_call: Literal["model", "tool"], key: str | None = None) -> None:
        """Raise Stop (or wait for a human to extend the budget) unless the call may run."""
        report = self._report  # type: ignore[attr-defined]
        while True:
            elapsed = workflow.now() - workflow.info().start_time
            problem = budget_problem(
                report.budget,
                report.used,
                elapsed,
                next_call=next_call,
                repeats=self._repeats,
                key=key,
            )
            if problem is None:
                return
            self._log(f"budget check: {problem}")  # type: ignore[attr-defined]
            if self._run.agent.on_budget != "ask":
                raise Stop(f"budget exhausted: {problem}")
            decision = await self._gate.ask(
                kind="escalation",
                step=report.step_total + 1,
                tool="budget",
                args=report.budget.model_dump(mode="json", exclude_none=True),
                reason=f"budget exhausted: {problem}",
                choices=["extend", "abort"],
                policy=self._run.agent.escalation,
            )
            if decision.choice != "extend" or decision.args is None:
                raise Stop(f"budget exhausted: {problem}; {decision.choice}: {decision.reason}")
            report.budget = extended(report.budget, decision.args)
            if problem.startswith("max_repeats"):
                self._repeats[key or ""] = 0  # the human says the repetition is intended

    # --- the loop ----------------------------------------------------------------------------

    async def _act(self) -> None:
        """Ask the model for the next action until it finishes; raise Stop if it cannot."""
        agent = self._run.agent
        schemas = loop_tool_schemas(self._tools, agent.tools)  # type: ignore[attr-defined]
        if self._run.carry is None:
            self._turns.append(Message(role="user", content=self._run.goal))
        malformed = 0
        system = system_prompt(self._run.goal, agent.prompt)
        while self._turn < agent.loop.max_turns:
            self._stop_if_cancelled()  # type: ignore[attr-defined]
            await self._continue_if_long()  # type: ignore[attr-defined]
            self._turn += 1
            reply = await self._ask_model("act", schemas, system, self._turns)
            actions, problems = parse_actions(reply, schemas)
            if problems:
                malformed += 1
                self._feed_back(problems)
                self._log(  # type: ignore[attr-defined]
                    f"model answer refused ({malformed} in a row): {problems[0][1]}"
                )
                if malformed > agent.budget.max_malformed:
                    raise Stop(
                        f"the model answered malformed {malformed} times in a row "
                        f"(max_malformed {agent.budget.max_malformed}): {problems[0][1]}"
                    )
                continue
            malformed = 0
            for action in actions:
                if action.kind == "finish":
                    self._report.summary = action.text  # type: ignore[attr-defined]
                    self._log(f"model finished: {action.text}")  # type: ignore[attr-defined]
                    return
                text = await (self._ask_human(action) if action.kind == "ask" else self._do(action))
                self._stop_if_cancelled()  # type: ignore[attr-defined]
                self._turns.append(
                    Message(
                        role="tool", content=text, tool_call_id=action.call_id, name=action.tool
                    )
                )
        raise Stop(f"the model did not finish within max_turns {agent.loop.max_turns}")

    async def _ask_model(
        self, kind: StepKind, tools: tuple[ToolSchema, ...], system: str, turns: list[Message]
    ) -> ModelReply:
        report = self._report  # type: ignore[attr-defined]
        agent = self._run.agent
        route = getattr(agent.routes, kind) or agent.routes.act
        assert route is not None
        await self._pay("model")
        # Only what was added since this thread's previous call travels (with that call's
        # context reference): the model activity rebuilds the rest, so history stays linear.
        context_ref, sent = self._threads.get(kind, (None, 0))
        added = tuple(turns[sent:])
        # The system prompt and tool schemas travel in full until a call has stored them, then
        # by reference (a new run after continue-as-new sends them once more).
        preamble = preamble_ref(system, tools)
        stored = preamble in self._preambles

        def request_for(ref: ModelRef) -> ModelRequest:
            return ModelRequest(
                agent=agent.name,
                kind=kind,
                model=ref,
                messages=added,
                tools=() if stored else tools,
                context_ref=context_ref,
                system="" if stored else system,
                policy=agent.loop,
                preamble_ref=preamble,
            )

        with span("model_call", kind=kind, run_id=report.run_id) as current:
            try:
                reply, ref, fallbacks = await ask_route(route, request_for)
            except ModelsExhausted as err:
                annotate(current, outcome="exhausted")
                raise Stop(str(err)) from None
            annotate(
                current,
                model=ref.label,
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
                cost=ref.cost(reply.usage.input_tokens, reply.usage.output_tokens),
                fallbacks=len(fallbacks),
                outcome="ok",
            )
        # The model's answer joins the conversation here; the model activity stored the same
        # message with its context, so it counts as sent.
        turns.append(Message(role="assistant", content=reply.text, tool_calls=reply.tool_calls))
        self._threads[kind] = (reply.context_ref, len(turns))
        self._preambles.add(preamble)
        used = report.used
        cost = ref.cost(reply.usage.input_tokens, reply.usage.output_tokens)
        count("model_calls", agent.name, model=ref.label)
        count("model_input_tokens", agent.name, reply.usage.input_tokens, model=ref.label)
        count("model_output_tokens", agent.name, reply.usage.output_tokens, model=ref.label)
        count("model_cost_microdollars", agent.name, round(cost * 1e6), model=ref.label)
        used.model_calls += 1
        used.input_tokens += reply.usage.input_tokens
        used.output_tokens += reply.usage.output_tokens
        used.cost = round(used.cost + cost, 6)
        report.model_calls.append(
            ModelCallRecord(
                kind=kind,
                model=ref.label,
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
                cost=round(cost, 6),
                latency_ms=reply.latency_ms,
                fallbacks=fallbacks,
            )
        )
        del report.model_calls[:-PROGRESS_KEPT]
        return reply

    def _feed_back(
        self, problems: list[tuple[str, str]], turns: list[Message] | None = None
    ) -> None:
        into = self._turns if turns is None else turns
        for call_id, message in problems:
            if call_id:
                into.append(Message(role="tool", content=message, tool_call_id=call_id))
            else:
                into.append(Message(role="user", content=message))

    async def _plan_with_model(self, tools: dict[str, ToolSpec]) -> PlanSpec:
        """The plan route: the model submits the whole plan, checked here before it is used."""
        agent, goal = self._run.agent, self._run.goal
        offered = [tools[name] for name in agent.tools if name in tools]
        system = plan_prompt(goal, agent.prompt, offered)
        turns = [Message(role="user", content=goal)]
        for _ in range(agent.budget.max_malformed + 1):
            reply = await self._ask_model("plan", (PLAN_SCHEMA,), system, turns)
            draft, problems = single_call(reply, PLAN_SCHEMA, PlanDraft)
            if draft is not None:
                unknown = sorted({s.tool for s in draft.steps} - set(agent.tools))
                if not unknown:
                    self._log(f"model planned {len(draft.steps)} step(s)")  # type: ignore[attr-defined]
                    return PlanSpec(goal=goal, steps=draft.steps, acceptance=draft.acceptance)
                call_id = reply.tool_calls[0].id
                problems = [(call_id, f"steps use tools the agent does not have: {unknown}")]
            self._log(f"plan refused: {problems[0][1]}")  # type: ignore[attr-defined]
            self._feed_back(problems, turns)
        raise Stop(f"the model gave no valid plan in {agent.budget.max_malformed + 1} answers")

    async def _review_with_model(self) -> AcceptanceState:
        """The verify route: a model reads what was done and says whether the goal is met."""
        report = self._report  # type: ignore[attr-defined]
        agent = self._run.agent
        done = [
            {"step": s.index, "tool": s.tool, "args": s.args, "done": s.done, "result": s.result}
            for s in report.steps
        ]
        checks = [{"criterion": c.criterion, "passed": c.passed} for c in report.acceptance]
        facts = json.dumps({"steps": done, "acceptance": checks}, default=str)
        system = review_prompt(self._run.goal, agent.prompt)
        turns = [Message(role="user", content=facts[: agent.loop.result_chars])]
        state = AcceptanceState(criterion="a model's review of the result", check="model:verify")
        for _ in range(agent.budget.max_malformed + 1):
            reply = await self._ask_model("verify", (VERDICT_SCHEMA,), system, turns)
            verdict, problems = single_call(reply, VERDICT_SCHEMA, Verdict)
            if verdict is not None:
                state.passed, state.detail = verdict.passed, verdict.reason
                return state
            self._feed_back(problems, turns)
        state.passed, state.detail = False, "the reviewing model gave no valid verdict"
        return state

    async def _do(self, action: Action) -> str:
        """Run one tool call as a new step of the plan; its result (or failure) as text."""
        report = self._report  # type: ignore[attr-defined]
        key = call_key(action.tool, action.args)
        step = StepState(
            index=report.step_total + 1,
            title=f"{action.tool}({compact(action.args)})"[:120],
            tool=action.tool,
            args=action.args,
        )
        report.steps.append(step)
        await self._run_step(step, key=key)  # type: ignore[attr-defined]
        if step.done:
            value = step.result if step.result_ref is None else step.result_ref.preview
            return json.dumps(value, default=str)
        return f"error: {step.error or 'the step did not run'}"

    async def _ask_human(self, action: Action) -> str:
        report = self._report  # type: ignore[attr-defined]
        decision: Decision = await self._gate.ask(
            kind="question",
            step=report.step_total + 1,
            tool=ASK_HUMAN,
            args={"question": action.text},
            reason=f"the model asks: {action.text}",
            choices=["answer", "abort"],
            policy=self._run.agent.escalation,
        )
        if decision.choice != "answer":
            raise Stop(f"question {action.text!r}: {decision.choice}: {decision.reason}")
        return f"the human answers: {decision.reason}"


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


EXTENDABLE_LIMITS = (*NARROWABLE_LIMITS, "max_repeats", "max_malformed", "max_denials")


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


def compact(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())

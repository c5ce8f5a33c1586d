"""StepByStep: an agent that acts one call at a time. A model call chooses each action; its
answer is checked before anything runs (malformed answers are fed back, within a bound); each
tool call is a step of the run's plan state (StepRunner); `ask_human` waits on the gate; the
model says when it has finished. Between turns the run may continue as new.

    await StepByStep(state, thread, steps, continuation, gate).act()
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from temporalio import workflow

if TYPE_CHECKING:  # only the type: workflow modules import nothing else from OpenTelemetry
    from opentelemetry.trace import Span

with workflow.unsafe.imports_passed_through():
    from keel.shared.tracing import span
    from keel.workflows.continuation import Continuation
    from keel.workflows.contracts import (
        ASK_HUMAN,
        DROP_RESULTS,
        FINISH,
        MCP_CALL,
        CheckedOutput,
        Decision,
        LoadedSkill,
        Message,
        OutputCheck,
        PrefetchPlan,
        ResourceRequest,
        SkillRequest,
        SkillState,
        StepState,
        ToolSchema,
    )
    from keel.workflows.delegation import Delegator
    from keel.workflows.failures import Unwind
    from keel.workflows.gate import HumanGate
    from keel.workflows.loop import (
        Action,
        call_key,
        parse_actions,
        system_prompt,
        tool_calls_left,
        tool_schemas,
    )
    from keel.workflows.model_thread import ModelThread
    from keel.workflows.planning import KEEL_ACTIVITY_TIMEOUT, KEEL_RETRY
    from keel.workflows.run_state import RunState
    from keel.workflows.steps import StepRunner


class StepByStep:
    def __init__(
        self,
        state: RunState,
        thread: ModelThread,
        steps: StepRunner,
        continuation: Continuation,
        gate: HumanGate,
        delegator: Delegator,
    ) -> None:
        self.delegator = delegator
        self.state = state
        self.thread = thread
        self.steps = steps
        self.continuation = continuation
        self.gate = gate
        # The tool schemas offered last turn, and what they were built from (_schemas).
        self._offered: tuple[tuple[object, ...], tuple[ToolSchema, ...]] | None = None

    async def act(self) -> None:
        """Ask the model for the next action until it finishes; raise Unwind if it cannot."""
        state, thread = self.state, self.thread
        agent = state.agent
        if state.run.carry is None:
            if state.previous_run is not None:  # the job asked for it; nothing else crosses
                earlier = f"What this job's previous run reported: {state.previous_run}"
                thread.turns.append(Message(role="user", content=earlier))
            if state.memory_context is not None:
                thread.turns.append(Message(role="user", content=state.memory_context))
            thread.turns.append(Message(role="user", content=state.run.goal))
        malformed = 0
        system = system_prompt(state.run.goal, agent.prompt)
        while thread.turn < agent.loop.max_turns:
            state.stop_if_cancelled()
            await self.continuation.if_long()
            thread.turn += 1
            schemas = self._schemas()  # a loaded skill's tools join the agent's own
            # The model call sits under the step it chooses: the span opens as that step's and
            # becomes a "turn" when the answer chooses no tool (finish, ask, malformed).
            step = state.report.step_total + 1
            with span("step", run_id=state.report.run_id, step=step) as turn:
                prefetch = self._prefetch_plan(schemas)
                reply = await thread.ask("act", schemas, system, thread.turns, prefetch)
                state.prefetched = {ran.step: ran for ran in reply.prefetched}
                actions, problems = parse_actions(reply, schemas)
                if not problems:
                    actions, problems = await self._check_output(actions)
                if problems:
                    turn.update_name("keel.turn")
                    malformed += 1
                    thread.feed_back(problems)
                    state.log(f"model answer refused ({malformed} in a row): {problems[0][1]}")
                    if malformed > agent.budget.max_malformed:
                        raise Unwind(
                            f"the model answered malformed {malformed} times in a row "
                            f"(max_malformed {agent.budget.max_malformed}): {problems[0][1]}"
                        )
                    continue
                malformed = 0
                if actions[0].kind != "tool":
                    turn.update_name("keel.turn")
                if await self._take(actions, turn):
                    return
        raise Unwind(f"the model did not finish within max_turns {agent.loop.max_turns}")

    def _schemas(self) -> tuple[ToolSchema, ...]:
        state, agent = self.state, self.state.agent
        loaded = tuple(name for skill in state.report.skills for name in skill.tools)
        loaded += tuple(n for n, s in state.tools.items() if s.activity == MCP_CALL)
        allowed = (*agent.tools, *(n for n in loaded if n not in agent.tools))
        # Nearly every turn offers what the last one did: the same tuple again, so the model
        # call's preamble is not hashed again either (ModelThread). Built anew when anything
        # it comes from differs (compared by identity first, so cheaply).
        source = (allowed, tuple(state.tools.get(n) for n in allowed), agent, state.skill_catalog)
        if self._offered is not None and self._offered[0] == source:
            return self._offered[1]
        schemas = tool_schemas(
            state.tools,
            allowed,
            agent.output_schema,
            agent.delegates,
            agent.loop.drop_results,
            state.skill_catalog,
        )
        self._offered = (source, schemas)
        return schemas

    def _prefetch_plan(self, schemas: tuple[ToolSchema, ...]) -> PrefetchPlan | None:
        """The quick reads this answer's model call may run itself (if it is asked as a local
        activity): the offered tools that are local reads of the worker's catalog and that no
        approval gate holds, at most as many as the budget still allows. The grants and
        ceilings go along: the activity checks them first."""
        state = self.state
        agent = state.agent
        eligible = tuple(
            schema.name
            for schema in schemas
            if (spec := state.tools.get(schema.name)) is not None
            and spec.runs_with_model_call
            and spec.name not in agent.approvals
        )
        most = tool_calls_left(state.report.budget, state.report.used)
        if not eligible or most == 0:
            return None
        return PrefetchPlan(
            tools=eligible,
            first_step=state.report.step_total + 1,
            run_id=workflow.info().workflow_id,
            key_prefix=state.key(""),
            grants=agent.grants,
            ceilings=tuple(state.run.ceilings),
            max_parallel=agent.loop.max_parallel,
            most=most,
        )

    async def _check_output(
        self, actions: list[Action]
    ) -> tuple[list[Action], list[tuple[str, str]]]:
        """A typed result is checked by the worker, which holds the type, before anything in
        the answer runs: the actions with the output as the type dumps it, or the problems to
        feed back (all or nothing, as parse_actions)."""
        finish = next((a for a in actions if a.kind == "finish"), None)
        if finish is None or self.state.agent.output_schema is None:
            return actions, []
        checked = await workflow.execute_local_activity(
            "keel.check_output",
            OutputCheck(agent=self.state.agent.name, output=finish.output),
            result_type=CheckedOutput,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )
        if checked.problem is not None:
            others = [
                (a.call_id, "not run: another call in this answer was invalid") for a in actions
            ]
            return [], [
                (finish.call_id, f"invalid output for {FINISH}: {checked.problem}"),
                *[o for o in others if o[0] != finish.call_id],
            ]
        typed = finish.model_copy(update={"output": checked.output})
        return [typed if a is finish else a for a in actions], []

    async def _take(self, actions: list[Action], turn: Span) -> bool:
        """Carry out one answer's actions in order; True once the model has finished. The
        first tool call is the step `turn` was opened for; the others get spans of their own.
        Consecutive calls that may run together do (see _together); results go back to the
        model in the order of the calls."""
        at = 0
        while at < len(actions):
            together = self._together(actions, at)
            if len(together) > 1:
                if at == 0:
                    turn.update_name("keel.turn")  # each call of the batch has its own span
                texts = await self._do_together(together)
                self.state.stop_if_cancelled()
                for action, text in zip(together, texts, strict=True):
                    self.thread.turns.append(
                        Message(
                            role="tool", content=text, tool_call_id=action.call_id, name=action.tool
                        )
                    )
                at += len(together)
                continue
            action = actions[at]
            at += 1
            if action.kind == "finish":
                self.state.report.summary = action.text
                self.state.report.output = action.output
                self.state.log(f"model finished: {action.text}")
                return True
            if action.kind == "drop":
                self._drop(action)
                continue
            if action.kind in ("skill", "resource"):
                text = await (
                    self._load_skill(action) if action.kind == "skill" else self._resource(action)
                )
            elif action.kind == "delegate":
                text = await self.delegator.delegate(action)
            else:
                within = turn if at == 1 else None
                text = await (
                    self._ask_human(action) if action.kind == "ask" else self._do(action, within)
                )
            self.state.stop_if_cancelled()
            self.thread.turns.append(
                Message(role="tool", content=text, tool_call_id=action.call_id, name=action.tool)
            )
        return False

    def _together(self, actions: list[Action], at: int) -> list[Action]:
        """The calls from `at` on that run at once: consecutive tool calls that may
        (StepRunner.may_run_together), when the agent allows more than one at a time. Runs from
        before parallel calls replay one call at a time."""
        if self.state.agent.loop.max_parallel < 2:
            return []
        run: list[Action] = []
        for action in actions[at:]:
            if action.kind != "tool" or not self.steps.may_run_together(action.tool, action.args):
                break
            run.append(action)
        if len(run) < 2 or not workflow.patched("keel-parallel-calls"):
            return []
        return run

    async def _do_together(self, actions: list[Action]) -> list[str]:
        """Run calls at once (at most max_parallel in flight), each a step of its own: every
        call is admitted and counted by the budget before any starts."""
        steps = [self._new_step(action) for action in actions]
        keys = [call_key(action.tool, action.args) for action in actions]
        for key in keys:
            await self.steps.reserve(key)
        slots = asyncio.Semaphore(self.state.agent.loop.max_parallel)

        async def one(step: StepState, key: str) -> None:
            async with slots:
                await self.steps.run(step, key=key, reserved=True)

        # Every call settles before anything is raised: a write completing after the run began
        # to unwind would otherwise miss its compensation.
        outcomes = await asyncio.gather(
            *(one(step, key) for step, key in zip(steps, keys, strict=True)),
            return_exceptions=True,
        )
        for raised in outcomes:
            if isinstance(raised, BaseException):
                raise raised
        return [self._result_text(step) for step in steps]

    def _new_step(self, action: Action) -> StepState:
        report = self.state.report
        step = StepState(
            index=report.step_total + 1,
            title=f"{action.tool}({args_text(action.args)})"[:120],
            tool=action.tool,
            args=action.args,
        )
        report.steps.append(step)
        return step

    async def _do(self, action: Action, within: Span | None = None) -> str:
        """Run one tool call as a new step of the plan; its result (or failure) as text."""
        step = self._new_step(action)
        await self.steps.run(step, key=call_key(action.tool, action.args), within=within)
        return self._result_text(step)

    @staticmethod
    def _result_text(step: StepState) -> str:
        if step.drafted:
            return json.dumps(step.result)
        if step.done:
            value = step.result if step.result_ref is None else step.result_ref.preview
            return json.dumps(value, default=str)
        return f"error: {step.error or 'the step did not run'}"

    async def _load_skill(self, action: Action) -> str:
        """Load a skill once: the worker snapshots it (by content hash) and its tools join the
        run's; loading grants nothing (its tools still need the agent's grants)."""
        report = self.state.report
        known = next((s for s in report.skills if s.name == action.tool), None)
        if known is not None:
            return f"skill {known.name} is already loaded; its instructions are above"
        loaded = await workflow.execute_activity(
            "keel.load_skill",
            SkillRequest(agent=self.state.agent.name, skill=action.tool),
            result_type=LoadedSkill,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )
        self.state.tools.update(loaded.tools)
        report.skills.append(
            SkillState(
                name=loaded.name,
                manifest=loaded.manifest,
                tools=sorted(loaded.tools),
                loaded_at=workflow.now(),
            )
        )
        self.state.log(f"skill {loaded.name} loaded ({loaded.manifest[:19]})")
        parts = [f"Skill {loaded.name} loaded. Its instructions:", loaded.body]
        if loaded.resources:
            parts.append(f"Its files (read_skill_resource): {', '.join(loaded.resources)}")
        if loaded.tools:
            parts.append(f"Tools it brings, now available: {', '.join(sorted(loaded.tools))}")
        return "\n\n".join(parts)

    async def _resource(self, action: Action) -> str:
        loaded = next((s for s in self.state.report.skills if s.name == action.tool), None)
        if loaded is None:
            return f"load skill {action.tool} first (load_skill), then read its files"
        return await workflow.execute_activity(
            "keel.read_skill_resource",
            ResourceRequest(skill=loaded.name, manifest=loaded.manifest, path=action.args["path"]),
            result_type=str,
            start_to_close_timeout=KEEL_ACTIVITY_TIMEOUT,
            retry_policy=KEEL_RETRY,
        )

    def _drop(self, action: Action) -> None:
        """The model drops earlier results from its own view: the answer carries their ids
        (Message.drops), so every later request, built from the turns, shows them no more."""
        ids = tuple(dict.fromkeys(action.args["call_ids"]))
        why = f": {action.text}" if action.text else ""
        self.state.log(f"model dropped {len(ids)} earlier result(s) from its context{why}")
        self.thread.turns.append(
            Message(
                role="tool",
                content=f"dropped from your context: {', '.join(ids) or 'nothing'}",
                tool_call_id=action.call_id,
                name=DROP_RESULTS,
                drops=ids,
            )
        )

    async def _ask_human(self, action: Action) -> str:
        decision: Decision = await self.gate.ask(
            kind="question",
            step=self.state.report.step_total + 1,
            tool=ASK_HUMAN,
            args={"question": action.text},
            reason=f"the model asks: {action.text}",
            choices=["answer", "abort"],
            policy=self.state.agent.escalation,
        )
        if decision.choice != "answer":
            raise Unwind(f"question {action.text!r}: {decision.choice}: {decision.reason}")
        return f"the human answers: {decision.reason}"


def args_text(args: dict[str, Any]) -> str:
    """A call's arguments as a step title shows them: `account='ann', amount=5`."""
    return ", ".join(f"{k}={v!r}" for k, v in args.items())

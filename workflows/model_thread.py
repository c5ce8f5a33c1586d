"""ModelThread: the run's conversations with its models. Each kind of call (plan, act, verify)
is a thread: only what was added since its previous call travels, with that call's context
reference, so history grows by the new messages only. Every call is admitted by the budget
first, and counted (usage, cost, metrics) when it returns.

    reply = await thread.ask("act", schemas, system, thread.turns)
    plan = await thread.plan(tools)          # the plan route
    review = await thread.review()           # the verify route
"""

from __future__ import annotations

import json

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from keel.shared.tracing import annotate, model_call_attributes, span
    from keel.workflows.budgets import BudgetKeeper
    from keel.workflows.contracts import (
        EVENT_TEXT_CHARS,
        PROGRESS_KEPT,
        AcceptanceState,
        ActingPolicy,
        Message,
        ModelCallRecord,
        ModelRef,
        ModelReply,
        ModelRequest,
        PlanSpec,
        PrefetchPlan,
        StepKind,
        ToolSchema,
        ToolSpec,
        preamble_ref,
    )
    from keel.workflows.failures import Unwind
    from keel.workflows.loop import (
        PLAN_SCHEMA,
        VERDICT_SCHEMA,
        PlanDraft,
        Verdict,
        plan_prompt,
        review_prompt,
        single_call,
    )
    from keel.workflows.metrics import count, observe
    from keel.workflows.routing import ModelsExhausted, ask_route
    from keel.workflows.run_state import RunState


class ModelThread:
    def __init__(self, state: RunState, budget: BudgetKeeper) -> None:
        self.state = state
        self.budget = budget
        self.turns: list[Message] = []  # the act thread: goal, answers, tool results
        self.threads: dict[str, tuple[str | None, int]] = {}  # kind: (context ref, turns sent)
        self.preambles: set[str] = set()  # system prompts + tool schemas stored this run
        self._last_preamble: tuple[str, tuple[ToolSchema, ...], str] | None = None
        # kind: (model, policy, preamble) of the call that returned the thread's context ref;
        # the next call leaves out what is the same (ModelRequest). Not carried: the first
        # call after continue-as-new sends them again.
        self.settings: dict[str, tuple[ModelRef, ActingPolicy, str]] = {}
        self.turn = 0  # act turns taken, across continuations
        carry = state.run.carry
        if carry is not None:
            self.turns = list(carry.turns)
            self.threads = {kind: (ref, 0) for kind, ref in carry.threads.items()}
            self.turn = carry.turn

    async def ask(
        self,
        kind: StepKind,
        tools: tuple[ToolSchema, ...],
        system: str,
        turns: list[Message],
        prefetch: PrefetchPlan | None = None,
    ) -> ModelReply:
        """One model call on `kind`'s route (falling back along it); the reply joins `turns`.
        A model asked as a local activity may also run the quick reads of `prefetch`."""
        agent = self.state.agent
        route = getattr(agent.routes, kind) or agent.routes.act
        assert route is not None
        await self.budget.admit("model")
        context_ref, sent = self.threads.get(kind, (None, 0))
        added = tuple(turns[sent:])
        # The system prompt and tool schemas travel in full until a call has stored them, then
        # by reference (a new run after continue-as-new sends them once more).
        preamble = self._preamble_ref(system, tools)
        stored = preamble in self.preambles
        last = self.settings.get(kind) if context_ref is not None else None
        model_was, policy_was, preamble_was = last or (None, None, None)

        def request_for(ref: ModelRef) -> ModelRequest:
            return ModelRequest(
                agent=agent.name,
                kind=kind,
                model=None if ref == model_was else ref,
                messages=added,
                tools=() if stored else tools,
                context_ref=context_ref,
                system="" if stored else system,
                policy=None if agent.loop == policy_was else agent.loop,
                preamble_ref=None if preamble == preamble_was else preamble,
                # Only to a local activity: a remote one's input is in the history.
                prefetch=prefetch if ref.local else None,
            )

        with span("model_call", kind=kind, run_id=self.state.report.run_id) as current:
            asked_at = workflow.now()
            try:
                reply, ref, fallbacks = await ask_route(route, request_for)
            except ModelsExhausted as err:
                annotate(current, outcome="exhausted")  # span() marks the Unwind an error
                raise Unwind(str(err)) from None
            annotate(
                current,
                model=ref.label,
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
                cost=ref.cost(reply.usage.input_tokens, reply.usage.output_tokens),
                fallbacks=len(fallbacks),
                outcome="ok",
            )
            model_call_attributes(
                current,
                provider=ref.provider,
                model=reply.model or ref.model,
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
            )
        usage = reply.usage
        self.state.events.add(
            "model_call",
            f"{ref.label} answered ({kind}): {len(reply.tool_calls)} tool call(s), "
            f"{usage.input_tokens} tokens in, {usage.output_tokens} out",
            data={
                "model": ref.label,
                "kind": kind,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cost": ref.cost(usage.input_tokens, usage.output_tokens),
                "text": reply.text[:EVENT_TEXT_CHARS],
                "tool_calls": [call.name for call in reply.tool_calls],
            },
        )
        # The model's answer joins the conversation here; the model activity stored the same
        # message with its context, so it counts as sent.
        turns.append(Message(role="assistant", content=reply.text, tool_calls=reply.tool_calls))
        self.threads[kind] = (reply.context_ref, len(turns))
        self.settings[kind] = (ref, agent.loop, preamble)
        self.preambles.add(preamble)
        self._count(kind, reply, ref, fallbacks)
        took = (workflow.now() - asked_at).total_seconds()
        observe("model_call_duration_seconds", agent.name, took, model=ref.label)
        return reply

    def _preamble_ref(self, system: str, tools: tuple[ToolSchema, ...]) -> str:
        """preamble_ref, hashed again only for another prompt or other schemas than last time
        (a run offers the same ones, the same tuple, at nearly every turn)."""
        last = self._last_preamble
        if last is not None and last[1] is tools and last[0] == system:
            return last[2]
        ref = preamble_ref(system, tools)
        self._last_preamble = (system, tools, ref)
        return ref

    def _count(
        self, kind: StepKind, reply: ModelReply, ref: ModelRef, fallbacks: list[str]
    ) -> None:
        report, agent = self.state.report, self.state.agent
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

    def feed_back(
        self, problems: list[tuple[str, str]], turns: list[Message] | None = None
    ) -> None:
        """Tell the model what was wrong with its answer (as the refused call's result)."""
        into = self.turns if turns is None else turns
        for call_id, message in problems:
            if call_id:
                into.append(Message(role="tool", content=message, tool_call_id=call_id))
            else:
                into.append(Message(role="user", content=message))

    async def plan(self, tools: dict[str, ToolSpec]) -> PlanSpec:
        """The plan route: the model submits the whole plan, checked here before it is used."""
        agent, goal = self.state.agent, self.state.run.goal
        offered = [tools[name] for name in agent.tools if name in tools]
        system = plan_prompt(goal, agent.prompt, offered)
        turns = [Message(role="user", content=goal)]
        for _ in range(agent.budget.max_malformed + 1):
            reply = await self.ask("plan", (PLAN_SCHEMA,), system, turns)
            draft, problems = single_call(reply, PLAN_SCHEMA, PlanDraft)
            if draft is not None:
                unknown = sorted({s.tool for s in draft.steps} - set(agent.tools))
                if not unknown:
                    self.state.log(f"model planned {len(draft.steps)} step(s)")
                    return PlanSpec(goal=goal, steps=draft.steps, acceptance=draft.acceptance)
                call_id = reply.tool_calls[0].id
                problems = [(call_id, f"steps use tools the agent does not have: {unknown}")]
            self.state.log(f"plan refused: {problems[0][1]}")
            self.feed_back(problems, turns)
        raise Unwind(f"the model gave no valid plan in {agent.budget.max_malformed + 1} answers")

    async def review(self) -> AcceptanceState:
        """The verify route: a model reads what was done and says whether the goal is met."""
        report, agent = self.state.report, self.state.agent
        done = [
            {"step": s.index, "tool": s.tool, "args": s.args, "done": s.done, "result": s.result}
            for s in report.steps
        ]
        checks = [{"criterion": c.criterion, "passed": c.passed} for c in report.acceptance]
        facts = json.dumps({"steps": done, "acceptance": checks}, default=str)
        system = review_prompt(self.state.run.goal, agent.prompt)
        turns = [Message(role="user", content=facts[: agent.loop.result_chars])]
        state = AcceptanceState(criterion="a model's review of the result", check="model:verify")
        for _ in range(agent.budget.max_malformed + 1):
            reply = await self.ask("verify", (VERDICT_SCHEMA,), system, turns)
            verdict, problems = single_call(reply, VERDICT_SCHEMA, Verdict)
            if verdict is not None:
                state.passed, state.detail = verdict.passed, verdict.reason
                return state
            self.feed_back(problems, turns)
        state.passed, state.detail = False, "the reviewing model gave no valid verdict"
        return state

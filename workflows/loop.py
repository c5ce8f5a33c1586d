"""The agent loop's pure parts: prompts and tool schemas, how a model's answer becomes typed
actions, and the budget checks (what the model is shown: keel/shared/context_view.py). No I/O,
no clocks (the caller passes workflow time), so the workflow imports it through
``imports_passed_through`` and a replay computes exactly the same."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keel.shared.rules import digest
from keel.workflows.contracts import (
    ASK_HUMAN,
    DELEGATE,
    DROP_RESULTS,
    FINISH,
    LOAD_SKILL,
    MAX_STEPS,
    READ_SKILL_RESOURCE,
    AcceptanceSpec,
    Budget,
    BudgetUsed,
    ModelReply,
    SkillInfo,
    StepSpec,
    ToolSchema,
    ToolSpec,
)

ACTION_SCHEMAS = (
    ToolSchema(
        name=FINISH,
        description="Call when the goal is met (or cannot be): a short summary of what was done.",
        parameters={
            "type": "object",
            "properties": {"summary": {"type": "string"}},
            "required": ["summary"],
        },
    ),
    ToolSchema(
        name=ASK_HUMAN,
        description="Ask the human operator a question and wait for the answer.",
        parameters={
            "type": "object",
            "properties": {"question": {"type": "string"}},
            "required": ["question"],
        },
    ),
)
SUBMIT_PLAN, VERDICT = "submit_plan", "verdict"
T = TypeVar("T", bound=BaseModel)


class PlanDraft(BaseModel):
    """What a planning model submits: the steps in order and optional acceptance checks."""

    model_config = ConfigDict(extra="forbid")

    steps: list[StepSpec] = Field(min_length=1, max_length=MAX_STEPS)
    acceptance: list[AcceptanceSpec] = Field(default_factory=list)


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    passed: bool
    reason: str = Field(min_length=1)


PLAN_SCHEMA = ToolSchema(
    name=SUBMIT_PLAN,
    description="Submit the plan: the tool calls to make in order, and acceptance checks.",
    parameters=PlanDraft.model_json_schema(),
)
VERDICT_SCHEMA = ToolSchema(
    name=VERDICT,
    description="Say whether the goal is met, and why.",
    parameters=Verdict.model_json_schema(),
)
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


class Action(BaseModel):
    """One thing the model asked for: a tool call, finishing, or a question to the human."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["tool", "finish", "ask", "delegate", "drop", "skill", "resource"]
    call_id: str
    tool: str = ""
    args: dict[str, Any] = {}
    # The summary (finish), the question (ask), the goal (delegate) or the reason (drop).
    text: str = ""
    output: Any = None  # what finish carries for a typed result (AgentSpec.output_type)


DROP_SCHEMA = ToolSchema(
    name=DROP_RESULTS,
    description=(
        "Remove earlier tool results you no longer need from your context, by the id of the "
        "call that made each; they stay in the run's record. Keeps your context small."
    ),
    parameters={
        "type": "object",
        "properties": {
            "call_ids": {"type": "array", "items": {"type": "string"}},
            "reason": {"type": "string"},
        },
        "required": ["call_ids"],
    },
)


def skill_schemas(skills: tuple[SkillInfo, ...]) -> tuple[ToolSchema, ToolSchema]:
    """load_skill, whose description is the catalog (all the model sees of a skill until it
    loads it), and read_skill_resource."""
    names = [s.name for s in skills]
    listing = "\n".join(f"- {s.name}: {s.description}" for s in skills)
    load = ToolSchema(
        name=LOAD_SKILL,
        description=(
            "Load a skill: its instructions (and any tools it brings) join your context. "
            f"Load one when the task calls for it. The skills:\n{listing}"
        ),
        parameters={
            "type": "object",
            "properties": {"name": {"type": "string", "enum": names}},
            "required": ["name"],
        },
    )
    read = ToolSchema(
        name=READ_SKILL_RESOURCE,
        description="Read one file of a loaded skill (its instructions name them).",
        parameters={
            "type": "object",
            "properties": {"name": {"type": "string", "enum": names}, "path": {"type": "string"}},
            "required": ["name", "path"],
        },
    )
    return load, read


def tool_schemas(
    tools: dict[str, ToolSpec],
    allowed: tuple[str, ...],
    output_schema: dict[str, Any] | None = None,
    delegates: tuple[str, ...] = (),
    drop: bool = False,
    skills: tuple[SkillInfo, ...] = (),
) -> tuple[ToolSchema, ...]:
    own = tuple(
        ToolSchema(
            name=name, description=tools[name].description, parameters=tools[name].parameters
        )
        for name in allowed
    )
    if delegates:
        own = (*own, delegate_schema(delegates))
    if drop:
        own = (*own, DROP_SCHEMA)
    if skills:
        own = (*own, *skill_schemas(skills))
    if output_schema is None:
        return own + ACTION_SCHEMAS
    return (*own, typed_finish(output_schema), *ACTION_SCHEMAS[1:])


def delegate_schema(delegates: tuple[str, ...]) -> ToolSchema:
    return ToolSchema(
        name=DELEGATE,
        description=(
            "Hand a goal to another agent: it works on it as a run of its own, with no more "
            "powers than you and part of your remaining budget; you get back its status and "
            "summary (or its output)."
        ),
        parameters={
            "type": "object",
            "properties": {
                "agent": {"type": "string", "enum": list(delegates)},
                "goal": {"type": "string"},
            },
            "required": ["agent", "goal"],
        },
    )


def typed_finish(output_schema: dict[str, Any]) -> ToolSchema:
    """finish with a required `output` of the agent's type. Definitions the type's schema
    refers to ("#/$defs/...") move to the top, where those references point."""
    output = {k: v for k, v in output_schema.items() if k != "$defs"}
    plain = ACTION_SCHEMAS[0]
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {**plain.parameters["properties"], "output": output},
        "required": ["summary", "output"],
    }
    if "$defs" in output_schema:
        parameters["$defs"] = output_schema["$defs"]
    return plain.model_copy(
        update={
            "description": f"{plain.description} `output` is the result, in the schema given.",
            "parameters": parameters,
        }
    )


def system_prompt(goal: str, prompt: str) -> str:
    return (f"{prompt}\n\n" if prompt else "") + (
        f"Goal: {goal}\n"
        "Work step by step: call one of the tools, read its result, decide the next call. "
        f"Call {FINISH} with a summary when the goal is met; call {ASK_HUMAN} if you need a "
        "decision only a human can make."
    )


def plan_prompt(goal: str, prompt: str, tools: list[ToolSpec]) -> str:
    listing = "\n".join(
        f"- {t.name}: {t.description} parameters: {json.dumps(t.parameters, sort_keys=True)}"
        for t in tools
    )
    return (f"{prompt}\n\n" if prompt else "") + (
        f"Goal: {goal}\nPlan the work as steps, each one call of these tools:\n{listing}\n"
        f"Answer by calling {SUBMIT_PLAN} once with the steps in order."
    )


def review_prompt(goal: str, prompt: str) -> str:
    return (f"{prompt}\n\n" if prompt else "") + (
        f"You review whether an agent met its goal: {goal}\nRead what it did and call "
        f"{VERDICT} with passed true only if the goal is met, and the reason."
    )


def schema_problems(parameters: dict[str, Any], args: dict[str, Any]) -> list[str]:
    """A first, deterministic check of arguments against a tool's JSON schema: required and
    unknown names and top-level types. The tool's own pydantic model checks the rest."""
    props: dict[str, Any] = parameters.get("properties", {})
    problems = [
        f"missing argument {name!r}" for name in parameters.get("required", []) if name not in args
    ]
    for name, value in args.items():
        if name not in props:
            problems.append(f"unknown argument {name!r}")
            continue
        expected = props[name].get("type")
        kind = JSON_TYPES.get(expected) if isinstance(expected, str) else None
        if kind is not None and (
            not isinstance(value, kind) or (expected != "boolean" and isinstance(value, bool))
        ):
            problems.append(f"argument {name!r} must be {expected}")
    return problems


def parse_actions(
    reply: ModelReply, schemas: tuple[ToolSchema, ...]
) -> tuple[list[Action], list[tuple[str, str]]]:
    """The reply as actions, or the problems to feed back: (call id, message) pairs, one per
    call the model made (every call must be answered), or ("", message) for a reply with none."""
    if not reply.tool_calls:
        return [], [
            ("", f"Answer with a tool call. Call {FINISH} with a summary when the goal is met.")
        ]
    by_name = {s.name: s for s in schemas}
    actions: list[Action] = []
    problems: list[tuple[str, str]] = []
    for call in reply.tool_calls:
        schema = by_name.get(call.name)
        if schema is None:
            allowed = ", ".join(by_name)
            problems.append((call.id, f"unknown tool {call.name!r}; the tools are: {allowed}"))
            continue
        try:
            args = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as err:
            problems.append((call.id, f"arguments of {call.name} are not JSON: {err.msg}"))
            continue
        if not isinstance(args, dict):
            problems.append((call.id, f"arguments of {call.name} must be a JSON object"))
            continue
        wrong = schema_problems(schema.parameters, args)
        if wrong:
            problems.append((call.id, f"invalid arguments for {call.name}: {'; '.join(wrong)}"))
            continue
        if call.name == FINISH:
            actions.append(
                Action(
                    kind="finish",
                    call_id=call.id,
                    text=str(args["summary"]),
                    output=args.get("output"),
                )
            )
        elif call.name == ASK_HUMAN:
            actions.append(Action(kind="ask", call_id=call.id, text=str(args["question"])))
        elif call.name == DROP_RESULTS:
            ids = args["call_ids"]
            if not all(isinstance(i, str) for i in ids):
                problems.append((call.id, "call_ids must be a list of call ids (strings)"))
                continue
            actions.append(
                Action(
                    kind="drop",
                    call_id=call.id,
                    args={"call_ids": ids},
                    text=str(args.get("reason", "")),
                )
            )
        elif call.name in (LOAD_SKILL, READ_SKILL_RESOURCE):
            may = schema.parameters["properties"]["name"]["enum"]
            if args["name"] not in may:
                problems.append((call.id, f"unknown skill {args['name']!r}; the skills: {may}"))
                continue
            if call.name == LOAD_SKILL:
                actions.append(Action(kind="skill", call_id=call.id, tool=args["name"]))
            else:
                path = {"path": str(args["path"])}
                actions.append(
                    Action(kind="resource", call_id=call.id, tool=args["name"], args=path)
                )
        elif call.name == DELEGATE:
            may = schema.parameters["properties"]["agent"]["enum"]
            if args["agent"] not in may:
                problems.append(
                    (call.id, f"unknown agent {args['agent']!r}; you may delegate to: {may}")
                )
                continue
            actions.append(
                Action(kind="delegate", call_id=call.id, tool=args["agent"], text=args["goal"])
            )
        else:
            actions.append(Action(kind="tool", call_id=call.id, tool=call.name, args=args))
    if problems:
        # All or nothing: a half-valid answer is fed back whole, so no call runs on a guess.
        ok = {a.call_id for a in actions}
        problems += [(i, "not run: another call in this answer was invalid") for i in ok]
    return (actions if not problems else []), problems


def call_key(tool: str, args: dict[str, Any]) -> str:
    """The tool and a digest of its arguments: what loop detection counts (and a long run
    carries across continue-as-new, so it stays small whatever the arguments)."""
    return f"{tool}:{digest(args)}"


REPEATS_CARRIED = 1000


def recent_repeats(repeats: Counter[str]) -> dict[str, int]:
    """What loop detection carries across continue-as-new: every call seen more than once, and
    the newest REPEATS_CARRIED of the rest (a 100,000-step run must not carry 100,000 keys)."""
    keys = list(repeats)
    newest = set(keys[-REPEATS_CARRIED:])
    return {k: repeats[k] for k in keys if repeats[k] > 1 or k in newest}


def tool_calls_left(budget: Budget, used: BudgetUsed) -> int | None:
    """How many more tool calls the budget admits (max_tool_calls, max_steps; the limits
    budget_problem checks per call); None when neither is set."""
    left = [
        limit - spent
        for limit, spent in (
            (budget.max_tool_calls, used.tool_calls),
            (budget.max_steps, used.steps),
        )
        if limit is not None
    ]
    return max(min(left), 0) if left else None


def budget_problem(
    budget: Budget,
    used: BudgetUsed,
    elapsed: timedelta,
    *,
    next_call: Literal["model", "tool"],
    repeats: Counter[str] | None = None,
    key: str | None = None,
) -> str | None:
    """Why the next call may not run, naming the budget; None when it may."""
    limits: list[tuple[int | float | None, int | float, str]] = [
        (budget.max_input_tokens, used.input_tokens, "max_input_tokens"),
        (budget.max_output_tokens, used.output_tokens, "max_output_tokens"),
        (budget.max_cost, used.cost, "max_cost"),
    ]
    if next_call == "model":
        limits.append((budget.max_model_calls, used.model_calls, "max_model_calls"))
    else:
        limits.append((budget.max_tool_calls, used.tool_calls, "max_tool_calls"))
        limits.append((budget.max_denials, used.denials, "max_denials"))
        limits.append((budget.max_steps, used.steps, "max_steps"))
    for limit, spent, name in limits:
        if limit is not None and spent >= limit:
            shown = f"{spent:.4f}" if isinstance(spent, float) else str(spent)
            return f"{name} {limit} reached ({shown} used)"
    if budget.max_duration is not None and elapsed >= budget.max_duration:
        return f"max_duration {budget.max_duration} reached"
    looping = (
        next_call == "tool"
        and repeats is not None
        and key is not None
        and budget.max_repeats is not None
        and repeats[key] + 1 >= budget.max_repeats
    )
    if looping:
        assert repeats is not None and key is not None
        return (
            f"max_repeats {budget.max_repeats} reached: {key.split(':', 1)[0]} asked for with "
            f"the same arguments {repeats[key] + 1} times (a loop, not progress)"
        )
    return None


WARN_AT = 0.8  # a live budget_warning when a limit is this much spent


def budget_warnings(budget: Budget, used: BudgetUsed, elapsed: timedelta) -> dict[str, str]:
    """The limits spent to WARN_AT or more, each with what it has used (for the live stream)."""
    limits: list[tuple[int | float | None, int | float, str]] = [
        (budget.max_input_tokens, used.input_tokens, "max_input_tokens"),
        (budget.max_output_tokens, used.output_tokens, "max_output_tokens"),
        (budget.max_cost, used.cost, "max_cost"),
        (budget.max_model_calls, used.model_calls, "max_model_calls"),
        (budget.max_tool_calls, used.tool_calls, "max_tool_calls"),
        (budget.max_steps, used.steps, "max_steps"),
    ]
    if budget.max_duration is not None:
        limits.append(
            (budget.max_duration.total_seconds(), elapsed.total_seconds(), "max_duration")
        )
    return {
        name: f"{name}: {spent:g} of {limit:g} used"
        for limit, spent, name in limits
        if limit is not None and limit > 0 and spent >= WARN_AT * limit
    }


def single_call(
    reply: ModelReply, schema: ToolSchema, model: type[T]
) -> tuple[T | None, list[tuple[str, str]]]:
    """A plan or a verdict: the reply's one call to `schema`, parsed, or the problems to feed
    back (every call the model made is answered)."""
    if not reply.tool_calls:
        return None, [("", f"Answer by calling {schema.name}.")]
    first, *rest = reply.tool_calls
    others = [(c.id, f"ignored: only one call, to {schema.name}, is expected") for c in rest]
    if first.name != schema.name:
        return None, [(first.id, f"unknown tool {first.name!r}; call {schema.name}"), *others]
    try:
        value = model.model_validate_json(first.arguments or "{}")
    except ValidationError as err:
        where = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in err.errors()[:5]
        )
        return None, [(first.id, f"invalid {schema.name}: {where}"), *others]
    return value, []

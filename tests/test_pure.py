"""Direct tests of the pure functions the workflow relies on: answer parsing, argument schema
checks, budget checks, the report's step window, rules and digests. No server needed."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from keel.shared.rules import digest, holds
from keel.workflows.contracts import ArgRule, Budget, BudgetUsed, RunReport, StepState
from keel.workflows.contracts import base as limits
from keel.workflows.contracts.models import ModelReply, ToolCallRequest, ToolSchema
from keel.workflows.loop import (
    budget_problem,
    call_key,
    parse_actions,
    schema_problems,
    tool_schemas,
)

PAY = ToolSchema(
    name="pay",
    description="pay",
    parameters={
        "type": "object",
        "properties": {"account": {"type": "string"}, "amount": {"type": "integer"}},
        "required": ["account", "amount"],
    },
)
SCHEMAS = (PAY, *tool_schemas({}, ()))  # pay, plus finish and ask_human


def reply(*calls: tuple[str, object]) -> ModelReply:
    return ModelReply(
        tool_calls=tuple(
            ToolCallRequest(
                id=f"c{i}",
                name=name,
                arguments=args if isinstance(args, str) else json.dumps(args),
            )
            for i, (name, args) in enumerate(calls, 1)
        )
    )


def test_a_valid_answer_becomes_actions_in_order() -> None:
    actions, problems = parse_actions(
        reply(("pay", {"account": "ann", "amount": 5}), ("finish", {"summary": "paid"})), SCHEMAS
    )
    assert problems == []
    assert [(a.kind, a.tool, a.args, a.text) for a in actions] == [
        ("tool", "pay", {"account": "ann", "amount": 5}, ""),
        ("finish", "", {}, "paid"),
    ]


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (("wire", {}), "unknown tool 'wire'; the tools are: pay, finish, ask_human"),
        (("pay", "{"), "arguments of pay are not JSON"),
        (("pay", "[1]"), "arguments of pay must be a JSON object"),
        (("pay", {"account": "ann"}), "invalid arguments for pay: missing argument 'amount'"),
        (
            ("pay", {"account": "ann", "amount": "5"}),
            "invalid arguments for pay: argument 'amount' must be integer",
        ),
    ],
)
def test_one_bad_call_refuses_the_whole_answer(call: tuple[str, object], problem: str) -> None:
    actions, problems = parse_actions(reply(("pay", {"account": "bo", "amount": 1}), call), SCHEMAS)
    assert actions == []  # all or nothing: no call runs on a guess
    assert problems[0][0] == "c2" and problems[0][1].startswith(problem)
    assert problems[1] == ("c1", "not run: another call in this answer was invalid")


def test_an_answer_without_a_call_is_told_to_call() -> None:
    assert parse_actions(ModelReply(text="done!"), SCHEMAS) == (
        [],
        [("", "Answer with a tool call. Call finish with a summary when the goal is met.")],
    )


def test_schema_problems_name_missing_unknown_and_mistyped_arguments() -> None:
    assert schema_problems(PAY.parameters, {"account": "a", "amount": True, "memo": "x"}) == [
        "argument 'amount' must be integer",  # a bool is not an integer here
        "unknown argument 'memo'",
    ]
    assert schema_problems(PAY.parameters, {}) == [
        "missing argument 'account'",
        "missing argument 'amount'",
    ]


def test_budget_names_the_first_limit_reached_and_spares_the_other_kind_of_call() -> None:
    budget = Budget(max_tool_calls=2, max_model_calls=3, max_duration=timedelta(minutes=5))
    used = BudgetUsed(tool_calls=2, model_calls=1)
    assert budget_problem(budget, used, timedelta(0), next_call="tool") == (
        "max_tool_calls 2 reached (2 used)"
    )
    assert budget_problem(budget, used, timedelta(0), next_call="model") is None
    assert budget_problem(budget, used, timedelta(minutes=5), next_call="model") == (
        "max_duration 0:05:00 reached"
    )


def test_a_call_repeated_with_the_same_arguments_is_a_loop() -> None:
    budget = Budget(max_repeats=3)
    key = call_key("pay", {"account": "ann", "amount": 5})
    assert key == call_key("pay", {"amount": 5, "account": "ann"})  # order does not matter
    repeats = Counter({key: 1})
    ok = budget_problem(
        budget, BudgetUsed(), timedelta(0), next_call="tool", repeats=repeats, key=key
    )
    assert ok is None
    repeats[key] += 1
    looping = budget_problem(
        budget, BudgetUsed(), timedelta(0), next_call="tool", repeats=repeats, key=key
    )
    assert looping is not None and looping.startswith("max_repeats 3 reached: pay asked for")


def test_the_report_keeps_the_newest_settled_steps_and_every_step_still_to_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "STEPS_KEPT", 3)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    steps = [
        StepState(index=i, title=f"s{i}", tool="t", done=i <= 6, finished_at=at)
        for i in range(1, 9)
    ]
    report = RunReport(run_id="r", agent="a", goal="g", steps=steps)
    kept = report.with_newest_steps()
    assert [s.index for s in kept.steps] == [6, 7, 8]  # the newest 3; only settled ones go
    assert (kept.steps_dropped, kept.steps_dropped_done, kept.step_total) == (5, 5, 8)
    pending = RunReport(
        run_id="r", agent="a", goal="g", steps=[s.model_copy(update={"done": False}) for s in steps]
    )
    assert len(pending.with_newest_steps().steps) == 8  # steps still to run are never dropped
    assert kept.with_newest_steps() == kept  # idempotent


@pytest.mark.parametrize(
    ("rule", "args", "for_grant", "for_gate"),
    [
        (ArgRule(arg="amount", op=">", value=100), {"amount": 500}, True, True),
        (ArgRule(arg="amount", op=">", value=100), {"amount": 5}, False, False),
        (ArgRule(arg="amount", op=">", value=100), {}, False, False),  # missing: never holds
        (ArgRule(arg="amount", op=">", value=100), {"amount": "lots"}, False, True),  # fail-safe
        (ArgRule(arg="to", op="in", value=["ann", "bo"]), {"to": "bo"}, True, True),
    ],
)
def test_a_rule_that_cannot_compare_falls_to_the_safe_side(
    rule: ArgRule, args: dict, for_grant: bool, for_gate: bool
) -> None:
    assert holds(rule, args, uncomparable=False) is for_grant
    assert holds(rule, args, uncomparable=True) is for_gate


def test_the_digest_is_canonical_and_short() -> None:
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2}) and len(digest({})) == 16


def test_payloads_leave_defaults_out_and_read_back_equal() -> None:
    """Keel's converter writes only what differs from a field's default (a mutated default
    list included), and reads the same values back; a union of channels keeps its `kind`."""
    from keel.plugin import KeelPayloadConverter
    from keel.workflows.contracts import AgentRunInput, AgentSpec, PlanSpec, StepSpec
    from keel.workflows.contracts.jobs import JobContext, OutboxChannel, WebhookChannel

    converter = KeelPayloadConverter()
    step = StepSpec(title="pay", tool="pay", args={"account": "a", "amount": 0})
    run = AgentRunInput(
        agent=AgentSpec(name="payer", budget=Budget(max_tool_calls=3)),
        goal="pay",
        plan=PlanSpec(goal="pay", steps=[step]),
        job=JobContext(
            name="nightly",
            channels=(OutboxChannel(dir="out"), WebhookChannel(url="https://hooks.example")),
        ),
    )
    report = RunReport(
        run_id="r", agent="payer", goal="pay", steps=[StepState(index=1, title="pay", tool="pay")]
    )
    report.progress_dropped = 2
    report.steps[0].attempts = 0  # set, but to its default: left out all the same
    (written_run, written_report) = converter.to_payloads([run, report])
    assert json.loads(written_run.data)["agent"] == {
        "name": "payer",
        "budget": {"max_tool_calls": 3},
    }
    assert '"draft"' not in written_run.data.decode()
    assert json.loads(written_run.data)["job"]["channels"][0] == {"kind": "outbox", "dir": "out"}
    assert '"attempts"' not in written_report.data.decode()
    read_run, read_report = converter.from_payloads(
        [written_run, written_report], [AgentRunInput, RunReport]
    )
    assert read_run == run and read_report == report
    assert isinstance(read_run.job.channels[1], WebhookChannel)


def test_equal_specs_are_one_object_and_different_ones_are_not() -> None:
    """contracts.interned: what a cached run keeps of its agent is shared with the runs that
    read the same spec, and only with those."""
    from keel.workflows.contracts import AgentSpec, Grant, interned

    first = interned(AgentSpec.model_validate_json('{"name": "a", "grants": [{"scope": "x"}]}'))
    again = AgentSpec.model_validate_json('{"name": "a", "grants": [{"scope": "x"}]}')
    other = AgentSpec(name="a", grants=(Grant(scope="y"),))
    assert again is not first and interned(again) is first
    assert interned(other) is other and interned(other) != first

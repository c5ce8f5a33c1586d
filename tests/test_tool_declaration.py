"""@tool refuses what would misbehave at run time, when the tool is declared."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError
from temporalio import activity
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

import examples.ledger as ledger
from keel import KeelPlugin
from keel.activities import Catalog, RetrySpec, tool
from keel.activities.catalog import load_module
from keel.shared.errors import CatalogError
from keel.workflows.contracts import PLAN_RUNNER, AgentSpec, PlanSpec, StepSpec


def test_defaults_are_bounded() -> None:
    @tool
    def lookup(key: str, limit: int = 10) -> str:
        """Looks a key up."""
        return key

    spec = lookup.spec
    assert (spec.effect, spec.retry.max_attempts, spec.timeout) == (
        "read",
        3,
        timedelta(seconds=30),
    )
    assert spec.description == "Looks a key up."
    assert spec.parameters["required"] == ["key"]
    assert spec.parameters["properties"]["limit"]["default"] == 10
    assert lookup("k") == "k"  # still a plain function


def test_unbounded_retry_is_refused() -> None:
    with pytest.raises(ValueError, match="unbounded retry"):

        @tool(retry=RetryPolicy(maximum_attempts=0))
        def forever() -> None: ...

    with pytest.raises(ValidationError, match="max_attempts"):
        RetrySpec(max_attempts=0)


def test_temporal_retry_policy_is_accepted_when_bounded() -> None:
    @tool(retry=RetryPolicy(maximum_attempts=7, initial_interval=timedelta(seconds=2)))
    def bounded() -> None: ...

    assert (bounded.spec.retry.max_attempts, bounded.spec.retry.initial_interval) == (
        7,
        timedelta(seconds=2),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"effect": "read", "compensation": "undo"}, "only a write tool has a compensation"),
        ({"effect": "delete"}, "effect must be 'read' or 'write'"),
        ({"name": "has space"}, "not a valid tool name"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"heartbeat": -1}, "heartbeat must be positive"),
        ({"effect": "write", "local": True}, "local=True is for read tools without heartbeat"),
        ({"local": True, "heartbeat": 2}, "local=True is for read tools without heartbeat"),
        ({"local": True, "timeout": 31}, "and with a timeout of at most 30 s"),
        ({"scopes": ("ledger:*",)}, "globs belong in grants"),
    ],
)
def test_bad_declarations_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):

        @tool(**kwargs)
        def t() -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "local"),
    [
        ({}, True),  # a quick read: a local activity, one server round trip less a step
        ({"timeout": 30}, True),
        ({"timeout": 31}, False),  # a read that may take long holds no workflow task
        ({"heartbeat": 5}, False),  # a local activity cannot heartbeat
        ({"effect": "write"}, False),  # a write is recorded before anything else happens
        ({"local": False}, False),
    ],
)
def test_quick_reads_run_as_local_activities_by_default(kwargs: dict, local: bool) -> None:
    @tool(**kwargs)
    def t() -> None: ...

    assert t.spec.local is local


def test_var_args_have_no_schema() -> None:
    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs"):

        @tool
        def loose(*args: int) -> None: ...


def test_catalog_refuses_two_tools_with_one_name() -> None:
    @tool(name="same")
    def a() -> None: ...

    @tool(name="same")
    def b() -> None: ...

    with pytest.raises(CatalogError, match="two tools are named 'same'"):
        Catalog.of([a, b])


def test_catalog_loads_a_file_and_reports_a_missing_module(tmp_path) -> None:
    path = tmp_path / "my_tools.py"
    path.write_text(
        "from activities import tool\n\n@tool\ndef hello(name: str) -> str:\n    return name\n"
    )
    assert "hello" in Catalog.from_modules([str(path)]).tools
    with pytest.raises(CatalogError, match=r"no such tools module: nowhere\.at_all"):
        load_module("nowhere.at_all")
    with pytest.raises(CatalogError, match="no such tools file"):
        load_module(str(tmp_path / "missing.py"))


def test_prepare_collects_every_problem() -> None:
    @tool
    def greet(name: str) -> str:
        return name

    catalog = Catalog.of([greet])
    plan = PlanSpec(
        goal="g",
        steps=[
            StepSpec(title="ok", tool="greet", args={"name": "x"}),
            StepSpec(title="missing arg", tool="greet"),
            StepSpec(title="ghost", tool="ghost"),
            StepSpec(title="check as tool", tool="file_exists", args={"path": "p"}),
        ],
    )
    problems = catalog.prepare(PLAN_RUNNER, plan).problems
    assert problems == [
        "step 2: invalid arguments for 'greet': name: Field required",
        "step 3: unknown tool 'ghost'",
        "step 4: unknown tool 'file_exists'",
    ]
    narrow = AgentSpec(name="narrow", tools=("other",))
    assert (
        catalog.prepare(narrow, plan).problems[0]
        == "step 1: agent 'narrow' may not use tool 'greet'"
    )


def test_plan_files_refuse_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PlanSpec.model_validate({"goal": "g", "steps": [{"title": "t", "tool": "x", "argz": {}}]})


@activity.defn(name="post_entry")
async def users_own_post_entry(amount: int) -> int:
    return amount


async def test_a_users_activity_named_like_a_tool_is_refused_at_worker_start(
    ts_client: Client,
) -> None:
    plugin = KeelPlugin(Catalog.from_modules([ledger]))
    with pytest.raises(CatalogError, match="activity name 'post_entry' is both a Keel tool"):
        Worker(ts_client, task_queue="clash", activities=[users_own_post_entry], plugins=[plugin])

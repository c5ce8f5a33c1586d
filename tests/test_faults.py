"""The fault injector: a seed reproduces the same faults, every fault type is really injected,
transient faults shorter than a tool's attempts are absorbed and longer ones fail after exactly
max attempts (time-skipping server: the backoffs cost no wall time)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

import examples.ledger as ledger
from keel.activities import Catalog
from keel.activities.faults import EXPLICIT, IMPLICIT, FaultSpec, Injector, set_injector
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import PLAN_RUNNER, AgentRunInput, PlanSpec, RunReport, StepSpec
from tests import sample_tools
from tests.conftest import keel_worker

CATALOG = Catalog.from_modules([ledger, sample_tools])


@pytest.fixture(autouse=True)
def no_faults_after() -> Iterator[None]:
    yield
    set_injector(None)


def test_a_seed_reproduces_the_same_faults() -> None:
    def faults(seed: int) -> list[str | None]:
        injector = Injector([FaultSpec(tool="t", mode="mixed", rate=0.5, seed=seed)])
        return [
            (f.kind if (f := injector.decide("t", "run-1", step, 1)) else None)
            for step in range(1, 401)
        ]

    first = faults(7)
    assert first == faults(7)
    assert first != faults(8)
    hits = [k for k in first if k is not None]
    assert 140 < len(hits) < 260  # rate 0.5 of 400 steps
    assert set(hits) == set(EXPLICIT + IMPLICIT)  # mixed mode draws every kind
    injector = Injector([FaultSpec(tool="t", rate=1.0, duration=2)])
    assert injector.decide("t", "r", 1, 2) is not None
    assert injector.decide("t", "r", 1, 3) is None  # the event lasted its 2 attempts
    assert injector.decide("other", "r", 1, 1) is None  # only the configured tool
    assert injector.decide("t", "r", -1, 1) is None  # acceptance checks are left alone
    counted = Injector([FaultSpec(tool="t", events=3, seed=5)])
    for run in ("a", "b", "c"):
        hit = [k for k in range(1, 65) if counted.decide("t", run, k, 1)]
        assert len(hit) == 3  # exactly the configured number of fault events per run


async def run_one(client: Client, tool: str, args: dict) -> RunReport:
    plan = PlanSpec(
        goal="faults", steps=[StepSpec(title=tool, tool=tool, args=args)], unverified_ok=True
    )
    async with keel_worker(client, CATALOG) as queue:
        return await outcome(
            await client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(agent=PLAN_RUNNER, goal="faults", plan=plan),
                id=f"faults-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
        )


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [
        ("exception", "InjectedError"),
        ("timeout", "InjectedTimeout"),
        ("unavailable", "InjectedUnavailable"),
        ("non_retryable", "InjectedPermanent"),
    ],
)
async def test_each_explicit_fault_is_injected(
    ts_client: Client, ledger_db: Path, kind: str, error_type: str
) -> None:
    spec = FaultSpec(tool="stock", kinds=(kind,), rate=1.0, duration=3)  # all 3 attempts
    set_injector(Injector([spec]))
    report = await run_one(ts_client, "stock", {"sku": "a", "count": 5})
    assert report.status == "NOT_DONE"
    assert f"{error_type}: injected" in report.reason
    expected_attempts = 1 if kind == "non_retryable" else 3
    assert report.steps[0].attempts == expected_attempts


@pytest.mark.parametrize(("duration", "absorbed"), [(1, True), (2, True), (3, False), (5, False)])
async def test_transient_faults_shorter_than_the_attempts_are_absorbed(
    ts_client: Client, ledger_db: Path, duration: int, absorbed: bool
) -> None:
    set_injector(
        Injector([FaultSpec(tool="stock", kinds=("unavailable",), rate=1.0, duration=duration)])
    )
    report = await run_one(ts_client, "stock", {"sku": "a", "count": 5})
    if absorbed:  # stock has 3 attempts
        assert report.status == "DONE" and report.steps[0].result == 5
        assert report.steps[0].attempts == duration + 1
    else:
        assert report.status == "NOT_DONE"
        assert report.steps[0].attempts == 3  # exactly max attempts, never more
        assert "InjectedUnavailable" in report.reason


async def test_implicit_faults_are_caught_by_validators_and_only_by_them(
    ts_client: Client, ledger_db: Path
) -> None:
    factor = FaultSpec(tool="stock", kinds=("factor",), rate=1.0, duration=1)
    unchecked = factor.model_copy(update={"tool": "stock_unchecked"})
    truncate = FaultSpec(tool="read_items", kinds=("truncate",), rate=1.0, duration=1)
    set_injector(Injector([factor, unchecked, truncate]))
    checked = await run_one(ts_client, "stock", {"sku": "a", "count": 500})
    assert checked.status == "DONE" and checked.steps[0].result == 500  # caught, read again
    assert checked.steps[0].attempts == 2
    fooled = await run_one(ts_client, "stock_unchecked", {"sku": "a", "count": 500})
    assert fooled.status == "DONE" and fooled.steps[0].result == 5000  # falsely DONE
    cut = await run_one(ts_client, "read_items", {"items": [1, 2, 3, 4]})
    assert cut.steps[0].result == [1, 2]
    kinds = Counter(
        f.kind
        for step in range(1, 200)
        if (
            f := Injector([FaultSpec(tool="x", mode="implicit", rate=1.0)]).decide(
                "x", "r", step, 1
            )
        )
    )
    assert set(kinds) == set(IMPLICIT)

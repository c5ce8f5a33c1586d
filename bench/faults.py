"""Agents under injected faults, with and without result validators, on the time-skipping
server (backoffs cost no wall time).

    python bench/faults.py [--quick]

Five scenarios (plans of 5-15 steps mixing reads with a known truth and ledger writes with
compensations; one agent escalates failures to a human, who never answers, so its deadline
aborts) run under E0 (clean), E1 (explicit), E2 (implicit) and E3 (mixed) faults at two rates,
4 trials each (seeds 1-4). Per configuration: DONE with correct results, honest NOT_DONE,
escalated, and falsely DONE (a wrong result reported as done; must be 0 with validators), and
pass^k: the share of scenarios whose k trials all end DONE and correct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fault_tools  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

import examples.ledger as ledger  # noqa: E402
from keel import KeelPlugin  # noqa: E402
from keel.activities import Catalog  # noqa: E402
from keel.activities.faults import FaultSpec, Injector, set_injector  # noqa: E402
from keel.plugin import keel_converter  # noqa: E402
from keel.runs import outcome  # noqa: E402
from keel.workflows import AgentWorkflow  # noqa: E402
from keel.workflows.contracts import (  # noqa: E402
    PLAN_RUNNER,
    RUN_PROTOCOL,
    AgentRunInput,
    PlanSpec,
    RunReport,
    StepSpec,
)

READS = ("stock", "prices", "customer")
MODES = {"E1": "explicit", "E2": "implicit", "E3": "mixed"}


def step(tool: str, **args: object) -> StepSpec:
    return StepSpec(title=f"{tool} {args}", tool=tool, args=args)


def pay(account: str, amount: int) -> StepSpec:
    return step("post_entry", account=account, amount=amount)


SCENARIOS: dict[str, list[StepSpec]] = {
    "restock": [step("stock", sku=f"sku{i}") for i in range(1, 5)] + [pay("supplier", 40)],
    "pricing": [step("prices", skus=[f"sku{i}" for i in range(j, j + 4)]) for j in range(0, 24, 4)]
    + [pay("pricing-fee", 5)],
    "crm": [step("customer", customer_id=f"c{i}") for i in range(1, 8)] + [pay("crm", 3)],
    "month-end": [pay(f"acct{i}", 10 * i) for i in range(1, 5)]
    + [step("stock", sku="sku7"), step("prices", skus=["sku1", "sku2"]), pay("audit", 1)],
    "mixed-15": [
        step(READS[i % 3], **arg)
        for i, arg in enumerate(
            [{"sku": "sku3"}, {"skus": ["sku4", "sku5"]}, {"customer_id": "c3"}] * 4
        )
    ]
    + [pay("x", 1), pay("y", 2), pay("z", 3)],
}
ESCALATES = {"crm"}  # its agent asks a human when a step gives up; nobody answers


def raw(steps: list[StepSpec]) -> list[StepSpec]:
    return [s.model_copy(update={"tool": f"{s.tool}_raw"}) if s.tool in READS else s for s in steps]


def correct(report: RunReport) -> bool:
    for s in report.steps:
        name = s.tool.removesuffix("_raw")
        if name in fault_tools.TRUTH and s.result != fault_tools.TRUTH[name](s.args):
            return False
    return True


def classify(report: RunReport) -> str:
    if report.decisions:
        return "escalated"
    if report.status == "DONE":
        return "correct" if correct(report) else "false_done"
    return "not_done"


async def main(quick: bool) -> int:
    binary = Path(sys.executable).parent / "temporal-test-server"
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(binary)
        if binary.exists()
        else shutil.which("temporal-test-server"),
        data_converter=keel_converter(None, None),
    )
    tools = [
        getattr(fault_tools, n)
        for n in ("stock", "stock_raw", "prices", "prices_raw", "customer", "customer_raw")
    ]
    agents = {
        name: PLAN_RUNNER.model_copy(
            update={"name": name, "on_failure": "ask" if name in ESCALATES else "fail"}
        )
        for name in SCENARIOS
    }
    catalog = Catalog.of([*Catalog.from_modules([ledger]).tools.values(), *tools, *agents.values()])
    queue = f"faults-{uuid.uuid4().hex[:6]}"
    rates = [0.3] if quick else [0.1, 0.3]
    trials = 1 if quick else 4
    configs = [("E0", 0.0)] + [(m, r) for m in MODES for r in rates]
    counts: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    passes: dict[tuple, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    tmp = tempfile.mkdtemp(prefix="keel-faults-")
    os.environ["KEEL_LEDGER_DB"] = f"{tmp}/ledger.sqlite"
    os.environ["KEEL_STORE_DIR"] = f"{tmp}/blobs"
    try:
        async with Worker(env.client, task_queue=queue, plugins=[KeelPlugin(catalog)]):
            for validators in (True, False):
                for mode, rate in configs:
                    for trial in range(1, trials + 1):
                        specs = [
                            FaultSpec(
                                tool=t,
                                mode=MODES.get(mode, "explicit"),
                                rate=rate,
                                duration=2,
                                seed=trial,
                            )
                            for t in (*READS, *(f"{r}_raw" for r in READS), "post_entry")
                        ]
                        set_injector(Injector(specs) if rate else None)
                        for name, steps in SCENARIOS.items():
                            agent = agents[name]
                            plan = PlanSpec(
                                goal=name,
                                steps=steps if validators else raw(steps),
                                unverified_ok=True,
                            )
                            report = await outcome(
                                await env.client.start_workflow(
                                    AgentWorkflow.run,
                                    AgentRunInput(
                                        agent=agent, goal=name, plan=plan, protocol=RUN_PROTOCOL
                                    ),
                                    id=f"{name}-{mode}-{rate}-{trial}-{validators}-{uuid.uuid4().hex[:4]}",
                                    task_queue=queue,
                                )
                            )
                            verdict = classify(report)
                            key = (validators, mode, rate)
                            counts[key][verdict] += 1
                            counts[key]["runs"] += 1
                            passes[key][name].append(verdict == "correct")
    finally:
        set_injector(None)
        await env.shutdown()

    print(
        f"{'validators':>10} {'faults':>6} {'rate':>5} {'runs':>5} {'correct':>8} "
        f"{'not_done':>9} {'escalated':>10} {'false_done':>11} {'pass^1':>7} {'pass^4':>7}"
    )
    false_with_validators = 0
    for (validators, mode, rate), c in counts.items():
        per = passes[(validators, mode, rate)]
        pass1 = sum(trials_[0] for trials_ in per.values()) / len(per)
        pass4 = sum(all(trials_) for trials_ in per.values()) / len(per)
        if validators:
            false_with_validators += c["false_done"]
        print(
            f"{'on' if validators else 'off':>10} {mode:>6} {rate:>5.1f} {c['runs']:>5} "
            f"{c['correct']:>8} {c['not_done']:>9} {c['escalated']:>10} {c['false_done']:>11} "
            f"{pass1:>7.2f} {(pass4 if trials >= 4 else float('nan')):>7.2f}"
        )
    print(f"trials per configuration: {trials}; transient faults last 2 attempts of 4")
    print(f"falsely DONE with validators on: {false_with_validators} (must be 0)")
    return 1 if false_with_validators else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one rate, one trial (for CI)")
    args = parser.parse_args()
    code = asyncio.run(main(args.quick))
    from keel.process import exit_now

    exit_now(code)

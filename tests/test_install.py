"""Keel installs as one top-level name, keel, so it coexists with a user's project: beside the
llama-index-workflows distribution (which installs a top-level `workflows`), and beside a
user's own workflows.py, in one worker."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from temporalio.client import Client

from tests.conftest import dev_address
from tests.processes import ROOT, run

USER_WORKFLOWS = """
from temporalio import workflow


@workflow.defn
class Greet:
    @workflow.run
    async def run(self, name: str) -> str:
        return f"hello {name}"
"""

USER_TOOLS = """
from keel import tool


@tool
def shout(text: str) -> str:
    return text.upper()
"""

USER_WORKER = """
import asyncio
import sys
import uuid

from temporalio.client import Client
from temporalio.worker import Worker

import workflows  # the user's own module, not Keel's
from keel import AgentRunInput, AgentWorkflow, Catalog, KeelPlugin, PlanSpec, StepSpec
from keel.workflows.contracts import PLAN_RUNNER


async def main(address: str) -> None:
    plugin = KeelPlugin(Catalog.from_modules(["my_tools"]))
    client = await Client.connect(address, plugins=[plugin])
    queue = f"coexist-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[workflows.Greet]):
        greeting = await client.execute_workflow(
            workflows.Greet.run, "ann", id=f"user-greet-{queue}", task_queue=queue
        )
        plan = PlanSpec(
            goal="shout", steps=[StepSpec(title="shout", tool="shout", args={"text": "hi"})],
            unverified_ok=True,
        )
        report = await client.execute_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=PLAN_RUNNER, goal=plan.goal, plan=plan),
            id=f"keel-{queue}",
            task_queue=queue,
        )
    print(workflows.__file__, greeting, report.status, report.steps[0].result)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
"""


async def test_a_users_own_workflows_module_runs_beside_keel_in_one_worker(
    dev_client: Client, tmp_path: Path
) -> None:
    (tmp_path / "workflows.py").write_text(USER_WORKFLOWS)
    (tmp_path / "my_tools.py").write_text(USER_TOOLS)
    (tmp_path / "worker.py").write_text(USER_WORKER)
    result = await run(
        sys.executable,
        str(tmp_path / "worker.py"),
        dev_address(dev_client),
        env={"PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
    )
    assert result.code == 0, result
    assert result.out.split() == [str(tmp_path / "workflows.py"), "hello", "ann", "DONE", "HI"]


async def test_keel_and_llama_index_workflows_install_into_one_virtualenv(tmp_path: Path) -> None:
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    built = await run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        str(wheels),
        str(ROOT),
        env={},
        timeout=300,
    )
    assert built.code == 0, built
    (wheel,) = wheels.glob("keel-*.whl")
    assert (await run(sys.executable, "-m", "venv", str(venv), env={})).code == 0
    python = str(venv / "bin" / "python")
    installed = await run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        str(wheel),
        "llama-index-workflows",
        env={},
        timeout=600,
    )
    assert installed.code == 0, installed
    probe = textwrap.dedent(
        """
        import workflows, keel
        from keel import AgentWorkflow, Catalog, KeelPlugin
        import keel.workflows.agent
        KeelPlugin(Catalog.of())
        print(workflows.__file__)
        print(keel.workflows.agent.__file__)
        """
    )
    both = await run(python, "-c", probe, env={}, cwd=tmp_path)
    assert both.code == 0, both
    theirs, ours = both.out.split()
    assert theirs.endswith("site-packages/workflows/__init__.py")  # llama-index's, untouched
    assert ours.endswith("site-packages/keel/workflows/agent.py")

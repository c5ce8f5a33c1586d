"""Two versions of one workflow, for the determinism test; kept apart because the workflow
sandbox re-imports the module that defines a workflow, and this one imports nothing else."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="probe_step")
async def probe_step() -> str:
    return "done"


@workflow.defn(name="Probe")
class ProbeV1:
    def __init__(self) -> None:
        self.resumed = False

    @workflow.signal
    def resume(self) -> None:
        self.resumed = True

    @workflow.run
    async def run(self) -> str:
        await workflow.execute_activity("probe_step", start_to_close_timeout=timedelta(seconds=10))
        await workflow.wait_condition(lambda: self.resumed)
        return "v1"


@workflow.defn(name="Probe")
class ProbeV2:
    """The same workflow after a careless edit: a timer where v1 scheduled an activity."""

    def __init__(self) -> None:
        self.resumed = False

    @workflow.signal
    def resume(self) -> None:
        self.resumed = True

    @workflow.run
    async def run(self) -> str:
        await asyncio.sleep(1)
        await workflow.wait_condition(lambda: self.resumed)
        return "v2"

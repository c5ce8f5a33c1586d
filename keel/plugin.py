"""KeelPlugin: Keel's workflows, activities and data converter on a user's own Client and Worker.

plugin = KeelPlugin(Catalog.from_modules(["my_tools"]))
client = await Client.connect("localhost:7233", plugins=[plugin])
worker = Worker(client, task_queue="keel")  # AgentWorkflow and the tools come from the plugin
"""

from __future__ import annotations

import dataclasses

from temporalio.contrib.pydantic import PydanticPayloadConverter, pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.plugin import SimplePlugin
from temporalio.workflow import NondeterminismError

from activities.catalog import Catalog
from workflows.agent import AgentWorkflow

WORKFLOWS = (AgentWorkflow,)


def _with_pydantic(existing: DataConverter | None) -> DataConverter:
    # Keep a codec or failure converter the user already set; only the payload converter changes.
    if existing is None:
        return pydantic_data_converter
    return dataclasses.replace(existing, payload_converter_class=PydanticPayloadConverter)


class KeelPlugin(SimplePlugin):
    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or Catalog.of()
        super().__init__(
            "keel.KeelPlugin",
            data_converter=_with_pydantic,
            activities=self.catalog.activities(),
            workflows=list(WORKFLOWS),
            # A determinism violation fails the run with its cause instead of retrying the
            # workflow task forever: the run's status shows it, nothing hangs silently.
            workflow_failure_exception_types=[NondeterminismError],
        )

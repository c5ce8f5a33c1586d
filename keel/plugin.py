"""KeelPlugin: Keel's workflows, activities and data converter on a user's own Client and Worker.

plugin = KeelPlugin(Catalog.from_modules(["my_tools"]))
client = await Client.connect("localhost:7233", plugins=[plugin])
worker = Worker(client, task_queue="keel")  # AgentWorkflow and the tools come from the plugin
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import temporalio.activity
import temporalio.workflow
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    PayloadCodec,
)
from temporalio.plugin import SimplePlugin
from temporalio.worker import WorkerConfig
from temporalio.workflow import NondeterminismError

from keel.activations import KeelActivations
from keel.activities.catalog import Catalog
from keel.codec import EncodedFailureConverter, EncryptedPayloadGuard
from keel.shared.errors import CatalogError
from keel.workflows.agent import AgentWorkflow

WORKFLOWS = (AgentWorkflow,)
WORKFLOW_TYPES = tuple(
    defn.name
    for w in WORKFLOWS
    if (defn := temporalio.workflow._Definition.from_class(w)) and defn.name
)


class CompactPydanticJSON(PydanticJSONPlainPayloadConverter):
    """temporalio.contrib.pydantic's JSON converter, writing no field that holds its default:
    the reader's model fills it in again, so the value read is the value written. A run's
    input, its activities' inputs and results and its markers carry only what differs from
    the defaults, which keeps histories small and leaves each cached run far fewer objects to
    hold (a 1.2 KB run input decoded to 10.8 KB of pydantic objects; 0.3 KB and 5 KB now).
    A default is therefore part of the wire format: changing one changes what in-flight runs
    read (add a field instead). Unions of models are told apart by a field always written
    (contracts.jobs' channels write their `kind`)."""

    def to_payload(self, value: Any) -> Payload | None:
        data = self._schema_serializer.to_json(value, exclude_defaults=True)
        return Payload(metadata={"encoding": self.encoding.encode()}, data=data)


# One pydantic JSON converter, so one cache of type adapters, for every workflow run.
_PYDANTIC_JSON = CompactPydanticJSON()


class KeelPayloadConverter(CompositePayloadConverter):
    """temporalio.contrib.pydantic's payload converter, writing no defaults (CompactPydanticJSON),
    with one cache of type adapters.

    temporalio makes a payload converter for every workflow run a worker holds, and pydantic's
    keeps its own cache of the type adapters it built: each cached run built and held its own
    (~30 KB a run, and the time to build them). An adapter depends only on its type."""

    def __init__(self) -> None:
        super().__init__(
            *(
                _PYDANTIC_JSON if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


def _with_pydantic(existing: DataConverter | None) -> DataConverter:
    # Keep a codec or failure converter the user already set; only the payload converter changes.
    if existing is None:
        return DataConverter(payload_converter_class=KeelPayloadConverter)
    return dataclasses.replace(existing, payload_converter_class=KeelPayloadConverter)


def keel_converter(existing: DataConverter | None, codec: PayloadCodec | None) -> DataConverter:
    converter = _with_pydantic(existing)
    if codec is None:
        if converter.payload_codec is not None:
            return converter  # the user's own codec
        return dataclasses.replace(converter, payload_codec=EncryptedPayloadGuard())
    return dataclasses.replace(
        converter, payload_codec=codec, failure_converter_class=EncodedFailureConverter
    )


class KeelPlugin(SimplePlugin):
    def __init__(self, catalog: Catalog | None = None, codec: PayloadCodec | None = None) -> None:
        """`codec` (e.g. keel.codec.AesGcmCodec) encodes every payload and failure message."""
        self.catalog = catalog or Catalog.of()
        super().__init__(
            "keel.KeelPlugin",
            data_converter=lambda existing: keel_converter(existing, codec),
            activities=self.catalog.activities(),
            workflows=list(WORKFLOWS),
            # A determinism violation fails the run with its cause instead of retrying the
            # workflow task forever: the run's status shows it, nothing hangs silently.
            workflow_failure_exception_types=[NondeterminismError],
        )

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        """Refuse, in one line, a worker whose own activities reuse a name Keel registers: tools
        keep their readable names in the web UI, so a clash must be caught here."""
        ours = {activity_name(fn) for fn in self.catalog.activities()}
        theirs = {activity_name(fn) for fn in config.get("activities") or ()}
        if clash := sorted(ours & theirs):
            raise CatalogError(
                f"activity name {', '.join(map(repr, clash))} is both a Keel tool (or Keel's own "
                "activity) and one of this worker's activities: rename one (@tool(name=...) or "
                "@activity.defn(name=...))"
            )
        if config.get("workflow_task_executor") is None:
            # Keel's runs are activated on the worker's event loop, others in threads as
            # before (keel.activations); a worker given its own executor keeps it.
            config["workflow_task_executor"] = KeelActivations(
                WORKFLOW_TYPES, max_threads=config.get("max_concurrent_workflow_tasks") or 500
            )
        return super().configure_worker(config)


def activity_name(fn: Callable[..., Any]) -> str:
    """The name an activity function is registered under."""
    defn = temporalio.activity._Definition.from_callable(fn)
    return defn.name if defn is not None and defn.name else getattr(fn, "__name__", repr(fn))

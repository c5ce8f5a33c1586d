"""Connecting to Temporal from the environment, the same way for the dev server and the cloud.

    client = await connect(plugins=[KeelPlugin(catalog)])

Settings come from temporalio's envconfig: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TEMPORAL_TLS*, or a profile in TEMPORAL_CONFIG_FILE. With none of them set,
Keel talks to the local dev server on localhost:7233.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import PollerInfo, TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, Plugin
from temporalio.converter import DataConverter
from temporalio.envconfig import ClientConfig

from keel.shared.errors import ConnectionFailed
from keel.workflows.contracts import DEFAULT_TASK_QUEUE

DEFAULT_ADDRESS = "localhost:7233"


def task_queue(override: str | None = None) -> str:
    return override or os.environ.get("KEEL_TASK_QUEUE") or DEFAULT_TASK_QUEUE


async def connect(plugins: Sequence[Plugin] = (), *, address: str | None = None) -> Client:
    """A client for the configured server. It speaks Keel's data converter (and encrypts with
    KEEL_CODEC_KEYS when set) unless `plugins` already brings a KeelPlugin; only the converter:
    a worker built on this client still takes its KeelPlugin (with its catalog) itself."""
    from keel.codec import AesGcmCodec
    from keel.plugin import KeelPlugin, keel_converter  # they import the workflow: not at load

    config = ClientConfig.load_client_connect_config()
    config.setdefault("target_host", DEFAULT_ADDRESS)
    if address:
        config["target_host"] = address
    # With a KeelPlugin, the plugin sets the converter; the SDK's default is its starting point.
    converter = DataConverter.default
    if not any(isinstance(p, KeelPlugin) for p in plugins):
        converter = keel_converter(None, AesGcmCodec.from_env())
    try:
        return await Client.connect(**config, plugins=list(plugins), data_converter=converter)
    except RuntimeError as err:
        raise ConnectionFailed(
            f"cannot reach Temporal at {config['target_host']} "
            f"(is it up? try ./temporal-dev up): {err}"
        ) from err


async def pollers(client: Client, queue: str, *, activities: bool = False) -> list[PollerInfo]:
    """The workers the server saw polling `queue` lately (workflow tasks, or activity tasks),
    each with its identity and last access time."""
    kind = (
        TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
        if activities
        else TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
    )
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
        )
    )
    return list(answer.pollers)

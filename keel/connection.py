"""Connecting to Temporal from the environment, the same way for the dev server and the cloud.

    client = await connect(plugins=[KeelPlugin(catalog)])

Settings come from temporalio's envconfig: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TEMPORAL_TLS*, or a profile in TEMPORAL_CONFIG_FILE. With none of them set,
Keel talks to the local dev server on localhost:7233.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from temporalio.client import Client, Plugin
from temporalio.envconfig import ClientConfig

from workflows.contracts import DEFAULT_TASK_QUEUE

DEFAULT_ADDRESS = "localhost:7233"


class ConnectionFailed(Exception):
    """The Temporal server could not be reached."""


def task_queue(override: str | None = None) -> str:
    return override or os.environ.get("KEEL_TASK_QUEUE") or DEFAULT_TASK_QUEUE


async def connect(plugins: Sequence[Plugin] = (), *, address: str | None = None) -> Client:
    config = ClientConfig.load_client_connect_config()
    config.setdefault("target_host", DEFAULT_ADDRESS)
    if address:
        config["target_host"] = address
    try:
        return await Client.connect(**config, plugins=list(plugins))
    except RuntimeError as err:
        raise ConnectionFailed(
            f"cannot reach Temporal at {config['target_host']} "
            f"(is it up? try ./temporal-dev up): {err}"
        ) from err

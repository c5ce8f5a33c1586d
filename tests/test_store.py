"""The blob store's pins and `starter.py prune`: blobs a running run references are never
removed, whatever their age; the rest go once older than the limit."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import (
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)
from temporalio.worker import Replayer

from keel import KeelPlugin
from keel.activities import Catalog, tool
from keel.activities.store import BlobStore, DirectoryStore, small_store_io
from keel.activities.store_s3 import S3Store
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import PLAN_RUNNER, AgentRunInput, PlanSpec, StepSpec
from tests.conftest import keel_worker
from tests.processes import starter
from tests.test_humans_cli import GOAL, cli_env  # noqa: F401  (a fixture)

DAY = 86400.0


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_prune_keeps_what_open_runs_pin_and_what_is_young(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "blobs")
    open_ref = store.put(b"context of a waiting run", run_id="open-run")
    closed_ref = store.put(b"result of a finished run", run_id="closed-run")
    loose_ref = store.put(b"written outside any run")
    young_ref = store.put(b"written a minute ago", run_id="closed-run")
    for ref in (open_ref, closed_ref, loose_ref):
        age(store.path_of(ref), 10 * DAY)
    for pin in (store.root / "pins").iterdir():
        age(pin, 10 * DAY)

    counted = store.prune({"open-run"}, older_than=7 * DAY, dry_run=True)
    assert (counted.blobs_removed, counted.pins_removed) == (2, 1)
    assert all(store.path_of(r).exists() for r in (open_ref, closed_ref, loose_ref))

    result = store.prune({"open-run"}, older_than=7 * DAY)
    assert (result.blobs_removed, result.blobs_kept_for_open_runs, result.blobs_kept_young) == (
        2,
        1,
        1,
    )
    assert result.bytes_removed == len(b"result of a finished run") + len(
        b"written outside any run"
    )
    assert store.get(open_ref) == b"context of a waiting run"
    assert store.get(young_ref) == b"written a minute ago"
    assert not store.path_of(closed_ref).exists() and not store.path_of(loose_ref).exists()
    assert len(list((store.root / "pins").iterdir())) == 1  # the open run's pin stays


def test_a_blob_written_again_is_young_again(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "blobs")
    ref = store.put(b"shared by two runs", run_id="first")
    age(store.path_of(ref), 10 * DAY)
    store.put(b"shared by two runs", run_id="second")
    assert store.prune(set(), older_than=7 * DAY).blobs_removed == 0


async def test_prune_from_the_command_line_spares_a_waiting_run(
    cli_env: dict[str, str],  # noqa: F811
) -> None:
    # The clerk acting step by step waits on a human for zed's payment, its conversation (and
    # system prompt and tools) in the store, pinned to it.
    run_id = f"prune-{uuid.uuid4().hex[:8]}"
    started = await starter(
        "run", "ledger-agent", "--goal", GOAL, "--id", run_id, "--wait", "--json", env=cli_env
    )
    assert started.code == 4, started
    store = BlobStore.from_env()
    assert isinstance(store, DirectoryStore)
    loose = store.put(b"an orphan from long ago")
    for blob in store.root.glob("??/*"):
        age(blob, 30 * DAY)

    bad = await starter("prune", "--older-than", "a week", env=cli_env)
    assert bad.code == 2 and "not a duration" in bad.err

    pruned = await starter("prune", "--older-than", "7d", env=cli_env)
    assert pruned.code == 0, pruned
    assert pruned.out.startswith("removed 1 blobs"), pruned.out
    assert not store.path_of(loose).exists()

    # Everything the waiting run wrote (its conversation, system prompt and tools) survived.
    pinned = [
        line
        for pin in (store.root / "pins").iterdir()
        for line in pin.read_text().splitlines()
        if line.startswith("sha256:")
    ]
    assert len(pinned) >= 3
    assert all(store.path_of(ref).exists() for ref in pinned)
    assert f"kept {len(set(pinned))} referenced by" in pruned.out
    assert run_id in (store.root / "pins").iterdir().__next__().read_text()


class MemoryDriver(StorageDriver):
    """A real ExternalStorage driver keeping payloads in this process (the test's own store)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def name(self) -> str:
        return "memory"

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        claims = []
        for payload in payloads:
            key = f"k{len(self.blobs)}"
            self.blobs[key] = payload.SerializeToString()
            claims.append(StorageDriverClaim(claim_data={"key": key}))
        return claims

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        return [Payload.FromString(self.blobs[c.claim_data["key"]]) for c in claims]


@tool
def bulky_read(size: int) -> str:
    """A result under Keel's inline limit but over the external storage threshold."""
    return "r" * size


async def test_keel_keeps_a_data_converters_external_storage(
    ts_client: Client, ledger_db: Path
) -> None:
    # Temporal's ExternalStorage moves any payload over a threshold out of history (S3 and GCS
    # drivers ship with temporalio); KeelPlugin must keep it on the converter it adjusts.
    driver = MemoryDriver()
    converter = dataclasses.replace(
        ts_client.data_converter,
        external_storage=ExternalStorage(drivers=[driver], payload_size_threshold=2048),
    )
    config: Any = {**ts_client.config(), "data_converter": converter}
    client = Client(**config)
    steps = [StepSpec(title="read", tool="bulky_read", args={"size": 3000})]
    async with keel_worker(client, Catalog.of([bulky_read])) as queue:
        report = await outcome(
            await client.start_workflow(
                AgentWorkflow.run,
                AgentRunInput(
                    agent=PLAN_RUNNER,
                    goal="bulky",
                    plan=PlanSpec(goal="bulky", steps=steps, unverified_ok=True),
                ),
                id=f"self-replayed-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
        )
    assert report.status == "DONE", report.reason
    assert report.steps[0].result == "r" * 3000
    assert driver.blobs  # the result went to the driver, the history holds its claim
    history = await client.get_workflow_handle(report.run_id).fetch_history()
    # A quick read runs as a local activity: its result is in the marker the call records.
    completed = [
        e.marker_recorded_event_attributes.details["result"].payloads[0]
        for e in history.events
        if "result" in e.marker_recorded_event_attributes.details
    ]
    assert completed and any(len(p.data) < 1000 and b"rrrr" not in p.data for p in completed)
    replayer = Replayer(workflows=[], data_converter=converter, plugins=[KeelPlugin()])
    await replayer.replay_workflow(history)  # the replay reads the claim back through the driver


async def test_a_model_calls_store_work_runs_inline_on_a_local_disk_only(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """small_store_io: a directory store's small reads and writes cost less than a thread hop,
    a bucket's may take tens of ms and must not hold the worker's event loop."""
    monkeypatch.delenv("KEEL_STORE_URL", raising=False)
    monkeypatch.setenv("KEEL_STORE_DIR", str(tmp_path))
    loop_thread = threading.get_ident()
    assert await small_store_io(threading.get_ident) == loop_thread
    assert not S3Store.on_local_disk
    monkeypatch.setattr(DirectoryStore, "on_local_disk", False)  # as a bucket's store is
    assert await small_store_io(threading.get_ident) != loop_thread

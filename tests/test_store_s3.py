"""The blob store in an S3-compatible bucket, against a real S3 API server (moto's, in its own
process): the same references as the directory store, pins and prune, and two workers that
share nothing but the bucket finishing one run."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from temporalio.client import Client

from keel.activities.store import DirectoryStore
from keel.activities.store_s3 import S3Store
from tests.conftest import dev_address
from tests.processes import WorkerProcess, run, starter
from tests.test_humans_cli import GOAL, status_of


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "no S3 server"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(10)


@pytest.fixture
def bucket_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket; the variables a worker on any machine would be given to reach it."""
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"keel-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return {**env, "KEEL_STORE_URL": f"s3://{bucket}/runs/"}


def store_of(env: dict[str, str]) -> S3Store:
    return S3Store.for_url(env["KEEL_STORE_URL"])


def test_same_references_as_a_directory_and_missing_is_file_not_found(
    bucket_env: dict[str, str], tmp_path: Path
) -> None:
    store = store_of(bucket_env)
    data = b'{"rows": [1, 2, 3]}'
    ref = store.put(data, run_id="run-1")
    assert ref == DirectoryStore(tmp_path).put(data)  # content-addressed alike
    assert store.get(ref) == data
    with pytest.raises(FileNotFoundError):
        store.get("sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="not a blob reference"):
        store.get("sha256:../../etc/passwd")
    (pin,) = store.pins()
    assert (pin.run_id, pin.refs) == ("run-1", {ref})
    assert store.location == f"{bucket_env['KEEL_STORE_URL'].rstrip('/')}/"


def test_prune_keeps_what_open_runs_pin_and_what_is_young(bucket_env: dict[str, str]) -> None:
    store = store_of(bucket_env)
    open_ref = store.put(b"context of a waiting run", run_id="open-run")
    closed_ref = store.put(b"result of a finished run", run_id="closed-run")
    loose_ref = store.put(b"written outside any run")
    # No sleeping for blobs to age: prune is asked as of a moment an hour later (with a day's
    # limit nothing is old yet; with half an hour's, everything unpinned is).
    later = time.time() + 3600
    young = store.prune({"open-run"}, older_than=86400, now=later)
    assert (young.blobs_removed, young.blobs_kept_young) == (0, 2)

    counted = store.prune({"open-run"}, older_than=1800, dry_run=True, now=later)
    assert (counted.blobs_removed, counted.pins_removed) == (2, 1)
    assert len(list(store.blobs())) == 3

    result = store.prune({"open-run"}, older_than=1800, now=later)
    assert (result.blobs_removed, result.blobs_kept_for_open_runs, result.blobs_kept_young) == (
        2,
        1,
        0,
    )
    assert result.bytes_removed == len(b"result of a finished run") + len(
        b"written outside any run"
    )
    assert store.get(open_ref) == b"context of a waiting run"
    for gone in (closed_ref, loose_ref):
        with pytest.raises(FileNotFoundError):
            store.get(gone)
    assert [p.run_id for p in store.pins()] == ["open-run"]


async def test_two_workers_sharing_only_a_bucket_finish_one_run(
    dev_client: Client, bucket_env: dict[str, str], tmp_path: Path
) -> None:
    # The ledger clerk acting step by step: worker A runs it until it waits on a human, then
    # dies; worker B, with its own empty directory, reads the conversation A stored in the
    # bucket and finishes. Neither writes a blob to its own disk.
    queue = f"s3-{uuid.uuid4().hex[:8]}"
    shared = {
        **bucket_env,
        "TEMPORAL_ADDRESS": dev_address(dev_client),
        "KEEL_TASK_QUEUE": queue,
        "KEEL_LEDGER_DB": str(tmp_path / "ledger.sqlite"),
        "KEEL_STICKY_TIMEOUT": "1",
    }

    def worker(name: str) -> WorkerProcess:
        own = {**shared, "KEEL_STORE_DIR": str(tmp_path / name)}
        return WorkerProcess(own, tmp_path / f"{name}.log", "--tools", "examples.ledger")

    first, second = worker("a"), worker("b")
    run_id = f"s3-{uuid.uuid4().hex[:8]}"
    await first.start()
    try:
        started = await starter(
            "run", "ledger-agent", "--goal", GOAL, "--id", run_id, "--wait", "--json", env=shared
        )
        assert started.code == 4, started  # waiting on the payment to zed
        await first.kill()
        store = store_of(bucket_env)
        (pin,) = store.pins()
        assert pin.run_id == run_id and len(pin.refs) >= 3  # conversation, prompt and tools

        # Prune while it waits: only an orphan goes, whatever the age limit.
        orphan = store.put(b"an orphan")
        pruned = await starter("prune", "--older-than", "0s", env=shared)
        assert pruned.code == 0, pruned
        assert pruned.out.startswith("removed 1 blobs"), pruned.out
        assert f"from {store.location}" in pruned.out
        with pytest.raises(FileNotFoundError):
            store.get(orphan)

        await second.start()
        approved = await starter("approve", run_id, "--approver", "ops@example.com", env=shared)
        assert approved.code == 0, approved
        for _ in range(600):
            report = await status_of(run_id, shared)
            if report["status"] != "RUNNING":
                break
            await asyncio.sleep(0.1)
        assert report["status"] == "DONE", json.dumps(report)[:2000]
    finally:
        await first.stop()
        await second.stop()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # Once the run is closed, its blobs go with the rest.
    pruned = await starter("prune", "--older-than", "0s", env=shared)
    assert pruned.code == 0 and "pins of closed runs" in pruned.out, pruned
    assert list(store_of(bucket_env).blobs()) == []


async def test_a_bad_store_url_is_one_line_before_anything_runs(dev_client: Client) -> None:
    bad = {"KEEL_STORE_URL": "ftp://nowhere/blobs", "TEMPORAL_ADDRESS": dev_address(dev_client)}
    worker = await run(sys.executable, "worker.py", env=bad, timeout=60)
    assert worker.code == 1 and "Traceback" not in worker.err, worker
    assert worker.err.strip() == (
        "worker.py: error: KEEL_STORE_URL='ftp://nowhere/blobs' is not s3://bucket/prefix"
    )
    pruned = await starter("prune", "--older-than", "7d", env=bad)
    assert pruned.code == 1 and "Traceback" not in pruned.err, pruned
    assert "is not s3://bucket/prefix" in pruned.err

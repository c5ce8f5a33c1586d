"""Keel's traces in a real LLM observability tool: Arize Phoenix reads them back.

    pip install -e '.[otel,phoenix]'   # Phoenix is large: an optional extra, not in CI
    python bench/phoenix_traces.py     # (named so, not phoenix.py, not to shadow Phoenix)
    python bench/phoenix_traces.py

Starts Phoenix (its own working directory, free ports), a dev server and a `worker.py` process
exporting over OTLP/HTTP to Phoenix (project `keel-bench`), runs the example agents with
`starter.py` (a planned run, an agent acting step by step on the scripted model, and a plan
whose tool fails after its retries), stops the worker (which flushes), reads the spans back
through Phoenix's client and prints: spans by kind, the token total against the runs' reports,
and error spans against the failed calls, steps and runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keel.devserver import start_dev_server  # noqa: E402
from keel.process import exit_now  # noqa: E402
from tests.processes import WorkerProcess, starter  # noqa: E402

PROJECT = "keel-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_phoenix(work: Path) -> tuple[asyncio.subprocess.Process, str]:
    port, grpc = free_port(), free_port()
    env = dict(
        os.environ,
        PHOENIX_PORT=str(port),
        PHOENIX_GRPC_PORT=str(grpc),
        PHOENIX_HOST="127.0.0.1",
        PHOENIX_WORKING_DIR=str(work),
        PHOENIX_TELEMETRY_ENABLED="false",
    )
    log = (work / "phoenix.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "phoenix.server.main", "serve", env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:
        for _ in range(240):
            try:
                if (await http.get(url + "/healthz")).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"Phoenix did not start; see {work / 'phoenix.log'}")


async def main() -> int:
    from phoenix.client import Client as PhoenixClient

    work = Path(tempfile.mkdtemp(prefix="keel-phoenix-"))
    phoenix, url = await start_phoenix(work)
    server = await start_dev_server()
    target = server.client.service_client.config.target_host
    env = {
        "TEMPORAL_ADDRESS": target,
        "KEEL_TASK_QUEUE": f"phoenix-{uuid.uuid4().hex[:6]}",
        "KEEL_LEDGER_DB": str(work / "ledger.sqlite"),
        "KEEL_STORE_DIR": str(work / "blobs"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": url,
        "KEEL_PROJECT": PROJECT,
    }
    tools = ("--tools", "examples.ledger", "tests/sample_tools.py")
    worker = WorkerProcess(env, work / "worker.log", *tools)
    plan = work / "failing.json"
    failing = {"title": "fails", "tool": "always_fails", "args": {"label": "phoenix"}}
    plan.write_text(json.dumps({"goal": "fail", "steps": [failing], "unverified_ok": True}))
    reports = []
    try:
        await worker.start()
        for args in (
            ("run", "ledger-clerk", "--goal", "Pay alice 30 and bob 20"),
            ("run", "ledger-agent", "--goal", "Pay ann 3 and bo 4"),
            ("run", "--plan", str(plan)),
        ):
            done = await starter(*args, "--wait", "--json", env=env, timeout=300)
            reports.append(json.loads(done.out[: done.out.index("\n}\n") + 2]))
    finally:
        await worker.stop()  # a graceful stop flushes the worker's last spans
        await server.shutdown()
    try:
        spans: list = []
        client = PhoenixClient(base_url=url)
        for _ in range(20):  # Phoenix ingests asynchronously
            spans = client.spans.get_spans(project_identifier=PROJECT, limit=5000, timeout=30)
            if len(spans) >= 10 and any(s["name"] == "keel.starter" for s in spans):
                time.sleep(1)
                spans = client.spans.get_spans(project_identifier=PROJECT, limit=5000, timeout=30)
                break
            time.sleep(1)
    finally:
        phoenix.terminate()
        await phoenix.wait()
    keel = [s for s in spans if s["name"].startswith("keel.")]
    kinds = Counter(s["span_kind"] for s in keel)
    tokens = sum(int(s["attributes"].get("llm.token_count.total", 0)) for s in keel)
    reported = sum(r["used"]["input_tokens"] + r["used"]["output_tokens"] for r in reports)
    errors = Counter(s["name"] for s in keel if s["status_code"] == "ERROR")
    failed_steps = sum(1 for r in reports for st in r["steps"] if st["error"] and not st["done"])
    not_done = sum(r["status"] == "NOT_DONE" for r in reports)
    attempts = sum(st["attempts"] for r in reports for st in r["steps"] if st["error"])
    print(f"Phoenix {url}, project {PROJECT}: {len(spans)} spans ({len(keel)} of Keel's)")
    runs = ", ".join(f"{r['agent']} {r['status']}" for r in reports)
    print(f"runs: {runs}")
    print("spans by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"tokens: {tokens} in spans, {reported} in the runs' reports")
    print(
        f"error spans: {sum(errors.values())} ({dict(errors)}); failed steps {failed_steps}, "
        f"failed attempts {attempts}, NOT_DONE runs {not_done}"
    )
    unknown = [s["name"] for s in keel if s["span_kind"] in ("UNKNOWN", "", None)]
    ok = not unknown and tokens == reported and errors["keel.run"] == not_done
    return 0 if ok else 1


if __name__ == "__main__":
    exit_now(asyncio.run(main()))

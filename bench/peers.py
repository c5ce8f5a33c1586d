"""Keel beside raw temporalio and its nearest peers: N tool calls a run, on one dev server.

    pip install -e '.[peers]'        # Pydantic AI and the OpenAI Agents SDK (optional)
    python bench/peers.py [--n 20 100 1000] [--runs 5] [--long 10000] [--quick]
                          [--only keel-react-lm langgraph-sync] [--server-default] [--eager]

Systems, alternating run by run so machine noise hits all alike:
  raw         plain temporalio: its own workflow, activity, converter and worker, N activities
              in a row (bench/raw_workflow.py)
  keel-plan   Keel with the plan given up front (no model)
  keel-react  Keel with a model call before each tool call (offline scripted model), the tool
              a quick read as Keel declares one by default: a local activity, so a step is one
              workflow task (the model's answer arrives, the read runs, the model is asked again)
  keel-react-remote  the same with the tool declared local=False: two activities a step
  keel-local  Keel with the plan given up front and the tool a local activity
  keel-react-lm  keel-react with the model asked as a local activity too (ModelRef(local=True))
  pydantic-ai Pydantic AI's Agent with TemporalDurability and a FunctionModel
  openai      temporalio.contrib.openai_agents with a fake model
  langgraph-sync  LangGraph's ReAct graph (model node, tool node) on a SQLite checkpointer on
              disk, each step's checkpoint written before the next (durability="sync"); no
              Temporal server (bench/peer_langgraph.py)
  langgraph-exit  the same, its checkpoint written once when the run ends (durability="exit")
The peers run where their packages are installed; a peer that fails or times out at some N is
reported as such and not tried at larger N. Every model chooses one tool call per turn from the
conversation, so each run makes exactly N calls. History bytes are the protobuf size of every
event of the run (all its continue-as-new segments); for LangGraph, the events are its stored
checkpoints and writes, the bytes their blobs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from counting_agent import counting_agent  # bench/ is on sys.path when run as a script
from overhead import noop, noop_local
from raw_workflow import RawToolLoop, plain_worker
from temporalio.client import Client
from temporalio.worker import Worker

from keel import KeelPlugin
from keel.activities import Catalog
from keel.devserver import add_server_default_flag, start_dev_server
from keel.plugin import keel_converter
from keel.runs import outcome
from keel.workflows import AgentWorkflow
from keel.workflows.contracts import (
    PLAN_RUNNER,
    RUN_PROTOCOL,
    AgentRunInput,
    AgentSpec,
    ModelRef,
    PlanSpec,
    Route,
    Routes,
    StepSpec,
)

next_read, REACT = counting_agent("bench-peers", "noop_local")  # Keel's default: local read
next_noop, REACT_REMOTE = counting_agent("bench-peers-remote", "noop")  # the read an activity
# The same agent asking its model as a local activity (keel-react-lm).
REACT_LM = REACT.model_copy(
    update={
        "name": "bench-peers-lm",
        "routes": Routes(
            act=Route(models=(ModelRef(provider="scripted", model="bench-peers", local=True),))
        ),
    }
)


@dataclass
class Sample:
    wall: float
    events: int
    size: int


@dataclass
class System:
    name: str
    start: Callable[[int, str], Awaitable[None]]  # (n, workflow id) -> completes or raises
    history: Callable[[str], Awaitable[tuple[int, int]]]  # run id -> (events, bytes)
    samples: dict[int, list[Sample]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)


def history_of(client: Client) -> Callable[[str], Awaitable[tuple[int, int]]]:
    return lambda workflow_id: chain_history(client, workflow_id)


async def chain_history(client: Client, workflow_id: str) -> tuple[int, int]:
    """Events and protobuf bytes of every run of a workflow id (continue-as-new included)."""
    events = size = 0
    async for execution in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        history = await client.get_workflow_handle(
            workflow_id, run_id=execution.run_id
        ).fetch_history()
        events += len(history.events)
        size += sum(len(e.SerializeToString()) for e in history.events)
    return events, size


def keel_systems(
    client: Client, queue: str, raw_client: Client, raw_queue: str, eager: bool
) -> list[System]:
    def timeout(n: int) -> timedelta:
        return timedelta(seconds=max(120, n))

    def plan_of(n: int, tool_name: str) -> AgentRunInput:
        steps = [StepSpec(title=f"noop {i}", tool=tool_name, args={"i": i}) for i in range(n)]
        return AgentRunInput(
            agent=PLAN_RUNNER,
            goal=f"{n} noops",
            plan=PlanSpec(goal=f"{n} noops", steps=steps, unverified_ok=True),
            protocol=RUN_PROTOCOL,  # what keel.start sends
        )

    async def keel(run: AgentRunInput, n: int, run_id: str) -> None:
        report = await outcome(
            await client.start_workflow(
                AgentWorkflow.run,
                run,
                id=run_id,
                task_queue=queue,
                execution_timeout=timeout(n),
                request_eager_start=eager,
            )
        )
        if report.status != "DONE":
            raise RuntimeError(f"{report.status}: {report.reason}")

    async def raw(n: int, run_id: str) -> None:
        await raw_client.execute_workflow(
            RawToolLoop.run,
            n,
            id=run_id,
            task_queue=raw_queue,
            execution_timeout=timeout(n),
            request_eager_start=eager,
        )

    def react(n: int, agent: AgentSpec = REACT) -> AgentRunInput:
        # The worker's agent, narrowed to n + 5 turns (a client may lower limits).
        narrowed = agent.model_copy(
            update={"loop": agent.loop.model_copy(update={"max_turns": n + 5})}
        )
        return AgentRunInput(agent=narrowed, goal=f"call noop {n}", protocol=RUN_PROTOCOL)

    history = history_of(client)
    return [
        System("raw", raw, history_of(raw_client)),
        System("keel-plan", lambda n, rid: keel(plan_of(n, "noop"), n, rid), history),
        System("keel-react", lambda n, rid: keel(react(n), n, rid), history),
        System("keel-react-remote", lambda n, rid: keel(react(n, REACT_REMOTE), n, rid), history),
        System("keel-local", lambda n, rid: keel(plan_of(n, "noop_local"), n, rid), history),
        System("keel-react-lm", lambda n, rid: keel(react(n, REACT_LM), n, rid), history),
    ]


async def peer_systems(
    address: str, stack: list[Worker], closers: list[Callable[[], Awaitable[None]]], eager: bool
) -> tuple[list[System], str]:
    """The peers that are installed, each with its own client (own data converter) and worker;
    LangGraph with its own SQLite file."""
    try:
        warnings.simplefilter("ignore", DeprecationWarning)
        import peer_langgraph
        import peer_openai
        import peer_pydantic_ai
        from peer_models import CountingProvider
        from pydantic_ai.durable_exec.temporal import AgentPlugin, PydanticAIPlugin
        from temporalio.contrib.openai_agents import ModelActivityParameters, OpenAIAgentsPlugin
    except ImportError as err:
        return [], f"peers not measured ({err.name} is not installed: pip install -e '.[peers]')"
    systems = []
    pai_client = await Client.connect(address, plugins=[PydanticAIPlugin()])
    pai_queue = f"peers-pai-{uuid.uuid4().hex[:6]}"
    stack.append(
        Worker(
            pai_client,
            task_queue=pai_queue,
            workflows=[peer_pydantic_ai.PeerPydanticAI],
            plugins=[AgentPlugin(peer_pydantic_ai.pai_agent)],
        )
    )
    oai_client = await Client.connect(
        address,
        plugins=[
            OpenAIAgentsPlugin(
                model_params=ModelActivityParameters(start_to_close_timeout=timedelta(seconds=30)),
                model_provider=CountingProvider(),
            )
        ],
    )
    oai_queue = f"peers-oai-{uuid.uuid4().hex[:6]}"
    stack.append(
        Worker(
            oai_client,
            task_queue=oai_queue,
            workflows=[peer_openai.PeerOpenAIAgents],
            activities=[peer_openai.peer_noop],
        )
    )

    def runner(client: Client, workflow: str, queue: str) -> Callable[[int, str], Awaitable[None]]:
        async def start(n: int, run_id: str) -> None:
            await client.execute_workflow(
                workflow,
                n,
                id=run_id,
                task_queue=queue,
                execution_timeout=timedelta(seconds=max(120, n)),
                request_eager_start=eager,
            )

        return start

    systems.append(
        System(
            "pydantic-ai",
            runner(pai_client, "PeerPydanticAI", pai_queue),
            history_of(pai_client),
        )
    )
    systems.append(
        System(
            "openai",
            runner(oai_client, "PeerOpenAIAgents", oai_queue),
            history_of(oai_client),
        )
    )
    folder = tempfile.mkdtemp(prefix="peers-langgraph-")
    for durability in ("sync", "exit"):
        run, stored, close = await peer_langgraph.open_langgraph(
            os.path.join(folder, f"{durability}.sqlite"), durability
        )
        closers.append(close)
        systems.append(System(f"langgraph-{durability}", run, stored))
    return systems, ""


async def measure(system: System, n: int) -> None:
    run_id = f"peers-{system.name}-{n}-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    try:
        await system.start(n, run_id)
    except Exception as err:  # a peer that cannot do N steps is a finding, not a crash
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        system.failed[n] = f"{type(cause).__name__}: {str(cause)[:120]}"
        return
    wall = time.perf_counter() - started
    events, size = await system.history(run_id)
    system.samples.setdefault(n, []).append(Sample(wall, events, size))


def table(systems: list[System], sizes: list[int]) -> list[str]:
    lines = [
        f"{'N':>5} {'system':<17} {'runs':>4} {'wall s median':>13} {'min-max':>15} "
        f"{'ms/step':>8} {'events':>7} {'KB':>9} {'B/step':>7} {'x raw':>6}"
    ]
    for n in sizes:
        raw = systems[0].samples.get(n)
        raw_median = statistics.median(s.wall for s in raw) if raw else None
        for system in systems:
            samples = system.samples.get(n, [])
            if not samples:
                why = system.failed.get(n, "not run")
                lines.append(f"{n:>5} {system.name:<17} {0:>4} failed: {why}")
                continue
            walls = [s.wall for s in samples]
            median = statistics.median(walls)
            last = samples[-1]
            ratio = f"{median / raw_median:>6.2f}" if raw_median else f"{'-':>6}"
            lines.append(
                f"{n:>5} {system.name:<17} {len(samples):>4} {median:>13.2f} "
                f"{f'{min(walls):.2f}-{max(walls):.2f}':>15} {median / n * 1000:>8.1f} "
                f"{last.events:>7} {last.size / 1024:>9.1f} {last.size / n:>7.0f} {ratio}"
            )
    for n in sizes:
        keel = [s for s in systems if s.name.startswith("keel") and s.samples.get(n)]
        peers = [s for s in systems if s.name not in ("raw",) and not s.name.startswith("keel")]
        for peer in peers:
            if not peer.samples.get(n):
                continue
            peer_median = statistics.median(s.wall for s in peer.samples[n])
            ratios = ", ".join(
                f"{k.name} {statistics.median(s.wall for s in k.samples[n]) / peer_median:.2f}"
                for k in keel
            )
            lines.append(f"N = {n}: wall relative to {peer.name}: {ratios}")
    return lines


async def long_run(client: Client, queue: str, n: int) -> list[str]:
    """One Keel ReAct run of n steps (continue-as-new on the way): does it finish, at what cost."""
    agent = REACT.model_copy(update={"loop": REACT.loop.model_copy(update={"max_turns": n + 5})})
    run_id = f"peers-long-{n}-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    report = await outcome(
        await client.start_workflow(
            AgentWorkflow.run,
            AgentRunInput(agent=agent, goal=f"call noop {n}", protocol=RUN_PROTOCOL),
            id=run_id,
            task_queue=queue,
            execution_timeout=timedelta(hours=3),
        )
    )
    wall = time.perf_counter() - started
    events, size = await chain_history(client, run_id)
    report_kb = len(report.model_dump_json()) / 1024
    return [
        f"long run: keel-react N = {n}: {report.status} ({report.steps_done} of "
        f"{report.step_total} steps done), {wall:.0f} s ({wall / n * 1000:.1f} ms/step), "
        f"{report.continued} continue-as-new, {events} events, {size / 1024 / 1024:.1f} MB "
        f"({size / n:.0f} B/step), final report {report_kb:.0f} KB"
    ]


async def main(
    sizes: list[int],
    runs: int,
    peers_wanted: bool,
    long: int,
    tuned: bool,
    only: list[str],
    eager: bool,
) -> int:
    env = await start_dev_server(
        tuned=tuned,
        data_converter=keel_converter(None, None),
    )
    address = env.client.service_client.config.target_host
    queue = f"peers-keel-{uuid.uuid4().hex[:6]}"
    catalog = Catalog.of([noop, noop_local, next_read, next_noop, REACT, REACT_REMOTE, REACT_LM])
    raw_queue = f"peers-raw-{uuid.uuid4().hex[:6]}"
    raw_client, raw_worker = await plain_worker(address, raw_queue)  # nothing of Keel's
    workers = [Worker(env.client, task_queue=queue, plugins=[KeelPlugin(catalog)]), raw_worker]
    systems = keel_systems(env.client, queue, raw_client, raw_queue, eager)
    note = "peers not measured (--no-peers)"
    closers: list[Callable[[], Awaitable[None]]] = []
    if peers_wanted:
        extra, note = await peer_systems(address, workers, closers, eager)
        systems += extra
    if only:  # raw stays: it is every ratio's base
        unknown = set(only) - {s.name for s in systems}
        if unknown:
            raise SystemExit(f"--only: no system named {', '.join(sorted(unknown))}")
        systems = [s for s in systems if s.name == "raw" or s.name in only]
    try:
        for worker in workers:
            await worker.__aenter__()
        # A fresh worker's first runs are faster than its steady state (the wait between a
        # workflow task's scheduling and its pickup grows to ~40 ms within a few runs, for raw
        # temporalio as for the rest), so every system gets warm-up runs that are not counted.
        for _ in range(3):
            for system in systems:
                await measure(system, 5)
                system.samples.pop(5, None)
                system.failed.pop(5, None)
        for n in sizes:
            for _ in range(runs):
                for system in systems:
                    if any(system.failed.get(m) for m in sizes if m <= n):
                        continue
                    await measure(system, n)
                    print(
                        f"  {system.name} N={n}: {len(system.samples.get(n, []))} done"
                        + (f", failed: {system.failed[n]}" if n in system.failed else ""),
                        file=sys.stderr,
                        flush=True,
                    )
        long_lines = await long_run(env.client, queue, long) if long else []
    finally:
        for worker in reversed(workers):
            await worker.__aexit__(None, None, None)
        for close in closers:
            await close()
        await env.shutdown()
    config = "tuned" if tuned else "default (--server-default)"
    eagerly = "; runs started eagerly (--eager)" if eager else ""
    print(f"server: {config} dev server; every system on it, alternating run by run{eagerly}")
    for line in table(systems, sizes) + long_lines:
        print(line)
    if note:
        print(note)
    keel_failed = [
        s.name for s in systems if s.name.startswith("keel") or s.name == "raw" if s.failed
    ]
    return 1 if keel_failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[20, 100, 1000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-peers", action="store_true", help="Keel and raw temporalio only")
    parser.add_argument("--long", type=int, default=0, help="then one Keel ReAct run of N steps")
    parser.add_argument("--quick", action="store_true", help="N = 20, 1 run (for CI)")
    parser.add_argument("--only", nargs="+", default=[], help="these systems (and raw) only")
    parser.add_argument(
        "--eager",
        action="store_true",
        help="every Temporal system starts its runs eagerly (its worker is in this process)",
    )
    add_server_default_flag(parser)
    args = parser.parse_args()
    if args.quick:
        args.n, args.runs = [20], 1
    code = asyncio.run(
        main(
            args.n,
            args.runs,
            not args.no_peers,
            args.long,
            not args.server_default,
            args.only,
            args.eager,
        )
    )
    from keel.process import exit_now

    exit_now(code)

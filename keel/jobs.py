"""Background jobs from a registry file, run by Temporal Schedules: no scheduler of Keel's own.

    registry = load_registry(Path("jobs.toml"))      # RegistryError names the job and field
    changes = await sync(client, registry, task_queue="keel")    # create/update/pause/delete
    rows = await job_rows(client, registry)           # due, running, blocked, draft, ...

The file (TOML, kept in version control) has one table per job:

    [jobs.nightly-report]
    agent = "ledger"                 # an agent the worker serves (or `plan` for a plan file)
    goal = "reconcile yesterday's payments"
    every = "1h"                     # or cron = "0 3 * * *"; timezone = "Europe/Berlin"
    mode = "draft"                   # reads run, writes are recorded as "would write"
    blocked_by = ["import"]          # skipped unless import's last run ended DONE

Each job is one schedule, `keel-job.NAME`, marked as Keel's (its memo names the registry), so
sync never touches a schedule it did not make. Every firing is a fresh AgentWorkflow with its
own id (`job.NAME-<fire time>`, the suffix Temporal adds), conversation and blobs.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
import zoneinfo
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleDescription,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode

from keel.activities.jobs import closed_report, recent_runs, said
from keel.activities.settings import seconds_in
from keel.runs import get_report, status_attribute_registered
from keel.shared.errors import JobNotFound, RegistryError
from keel.workflows.contracts import (
    PLAN_RUNNER,
    RUN_PREFIX,
    SCHEDULE_PREFIX,
    AgentRunInput,
    AgentSpec,
    Budget,
    Channel,
    JobContext,
    NotifyOn,
    OutboxChannel,
    PlanSpec,
    WebhookChannel,
    job_name,
    schedule_id,
)

OVERLAP = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "buffer_all": ScheduleOverlapPolicy.BUFFER_ALL,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "terminate_other": ScheduleOverlapPolicy.TERMINATE_OTHER,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
}
DEFAULT_OUTBOX = ".keel/outbox"  # beside the registry file, when a job names no channel
MARKER = "keel_registry"  # the schedule memo that makes a schedule Keel's, naming its registry
HASH = "keel_job_hash"  # the action memo: what the schedule was made from


class _Table(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}


class ChannelEntry(_Table):
    """One `[[jobs.NAME.notify]]` entry: `outbox = "DIR"` or `webhook = "URL"` (+ headers)."""

    outbox: str | None = None
    webhook: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> ChannelEntry:
        if (self.outbox is None) == (self.webhook is None):
            raise ValueError("give exactly one of outbox = DIR or webhook = URL")
        if self.outbox is not None and self.headers:
            raise ValueError("headers belong to a webhook")
        return self


class JobSpec(_Table):
    """One `[jobs.NAME]` table of the registry file."""

    agent: str | None = None
    goal: str | None = Field(None, min_length=1)
    plan: str | None = None  # a plan file (JSON), relative to the registry file
    cron: str | None = None
    every: str | None = None
    timezone: str = "UTC"
    # Each firing happens up to this much later, at random: jobs sharing a time (every hour on
    # the hour) do not all fire in the same second (bench/jobs.py measures the difference).
    jitter: str | None = None
    mode: Literal["live", "draft"] = "live"
    enabled: bool = True
    budget: Budget = Budget()
    routes: str | None = None  # model routes the worker offers by name (keel.NamedRoutes)
    output_dir: str | None = None
    blocked_by: tuple[str, ...] = ()
    overlap: Literal[
        "skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"
    ] = "skip"
    catchup_window: str = "10m"
    previous_run: bool = False
    notify: tuple[ChannelEntry, ...] | None = None  # None: the outbox beside the file
    notify_on: tuple[NotifyOn, ...] = ("ended", "waiting")

    @field_validator("every", "catchup_window", "jitter")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and seconds_in(value) < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) not in (5, 6, 7) and not value.startswith("@"):
            raise ValueError(f"{value!r} is not a cron expression like '0 3 * * *'")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone like UTC or Europe/Berlin") from None
        return value

    @field_validator("blocked_by")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            job_name(name)
        return value

    @model_validator(mode="after")
    def _whole(self) -> JobSpec:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give exactly one of cron = '...' or every = '1h'")
        if self.goal is None and self.plan is None:
            raise ValueError("give a goal, a plan file, or both")
        if self.agent is None and self.plan is None:
            raise ValueError("give the agent (or a plan file, which runs without one)")
        return self


class Job(BaseModel):
    """A job as sync makes it: its name, its table, and the run its schedule starts."""

    name: str
    spec: JobSpec
    run: AgentRunInput

    @property
    def schedule_id(self) -> str:
        return schedule_id(self.name)

    def fingerprint(self, task_queue: str) -> str:
        data = {"spec": self.spec.model_dump(mode="json"), "run": self.run.model_dump(mode="json")}
        text = json.dumps({**data, "task_queue": task_queue}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Registry(BaseModel):
    path: Path
    name: str = "default"  # schedules of another registry on the same namespace are not touched
    jobs: dict[str, Job] = Field(default_factory=dict)


def load_registry(path: Path) -> Registry:
    """The registry in `path`, checked whole: every problem names the file, job and field."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise RegistryError(f"{path}: cannot read it: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise RegistryError(f"{path}: not TOML: {err}") from None
    unknown = sorted(set(data) - {"jobs", "registry"})
    if unknown:
        raise RegistryError(f"{path}: unknown top-level key(s) {unknown}: only [jobs.NAME] tables")
    name = data.get("registry", "default")
    if not isinstance(name, str) or not name:
        raise RegistryError(f"{path}: registry must be a name")
    tables = data.get("jobs", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise RegistryError(f"{path}: each job is a table: [jobs.NAME]")
    registry = Registry(path=path, name=name)
    for job, table in tables.items():
        try:
            job_name(job)
        except ValueError as err:
            raise RegistryError(f"{path}: job {job!r}: {err}") from None
        try:
            spec = JobSpec.model_validate(table)
        except ValidationError as err:
            raise RegistryError(f"{path}: job {job!r}: {problem(err)}") from None
        registry.jobs[job] = Job(name=job, spec=spec, run=run_of(path, job, spec))
    check_blockers(registry)
    return registry


def problem(err: ValidationError) -> str:
    """The first problem pydantic found, as `field 'every': '5x' is not a duration ...`."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    message = first["msg"].removeprefix("Value error, ")
    return f"field {where!r}: {message}" if where else message


def check_blockers(registry: Registry) -> None:
    """Every blocker is a job of the file, and no job waits on itself through others (it
    would be skipped forever)."""
    jobs = registry.jobs
    for name, job in jobs.items():
        for other in job.spec.blocked_by:
            if other not in jobs:
                raise RegistryError(
                    f"{registry.path}: job {name!r}: field 'blocked_by': no job {other!r} in "
                    "this file"
                )

    def cycle(name: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        if name in seen:
            return (*seen, name)
        for other in jobs[name].spec.blocked_by:
            if found := cycle(other, (*seen, name)):
                return found
        return None

    for name in jobs:
        if found := cycle(name, ()):
            raise RegistryError(
                f"{registry.path}: job {name!r}: field 'blocked_by': a cycle "
                f"({' -> '.join(found)}) would skip these jobs forever"
            )


def run_of(path: Path, name: str, spec: JobSpec) -> AgentRunInput:
    """The run input a job's schedule starts with (paths made absolute from the file's)."""
    base = path.resolve().parent
    plan = None
    if spec.plan is not None:
        plan_path = base / spec.plan
        try:
            plan = PlanSpec.model_validate_json(plan_path.read_text())
        except OSError as err:
            raise RegistryError(
                f"{path}: job {name!r}: field 'plan': cannot read {plan_path}: "
                f"{err.strerror or err}"
            ) from None
        except ValidationError as err:
            raise RegistryError(
                f"{path}: job {name!r}: field 'plan': {plan_path}: {problem(err)}"
            ) from None
    channels: list[Channel] = []
    for entry in spec.notify if spec.notify is not None else (ChannelEntry(outbox=DEFAULT_OUTBOX),):
        if entry.outbox is not None:
            channels.append(OutboxChannel(dir=str(base / entry.outbox)))
            continue
        try:
            channels.append(WebhookChannel(url=entry.webhook or "", headers=entry.headers))
        except ValidationError as err:
            raise RegistryError(f"{path}: job {name!r}: field 'notify': {problem(err)}") from None
    try:
        return AgentRunInput(
            agent=AgentSpec(name=spec.agent or PLAN_RUNNER.name, budget=spec.budget),
            goal=spec.goal or (plan.goal if plan else ""),
            plan=plan,
            routes=spec.routes,
            draft=spec.mode == "draft",
            job=JobContext(
                name=name,
                blocked_by=spec.blocked_by,
                previous_run=spec.previous_run,
                channels=tuple(channels),
                notify_on=spec.notify_on,
                output_dir=str(base / spec.output_dir) if spec.output_dir else None,
            ),
        )
    except ValidationError as err:
        raise RegistryError(f"{path}: job {name!r}: {problem(err)}") from None


def schedule_of(job: Job, registry: Registry, task_queue: str, status_attribute: bool) -> Schedule:
    spec = job.spec
    run = job.run.model_copy(update={"status_attribute": status_attribute})
    every = seconds_in(spec.every) if spec.every else None
    return Schedule(
        action=ScheduleActionStartWorkflow(
            "AgentWorkflow",
            run,
            id=f"{RUN_PREFIX}{job.name}",  # Temporal appends the fire time
            task_queue=task_queue,
            memo={"agent": run.agent.name, "goal": run.goal, HASH: job.fingerprint(task_queue)},
            static_summary=f"job {job.name}: {run.agent.name}: {run.goal}"[:200],
        ),
        spec=ScheduleSpec(
            cron_expressions=[spec.cron] if spec.cron else [],
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every))] if every else [],
            time_zone_name=spec.timezone,
            jitter=timedelta(seconds=seconds_in(spec.jitter)) if spec.jitter else None,
        ),
        policy=SchedulePolicy(
            overlap=OVERLAP[spec.overlap],
            catchup_window=timedelta(seconds=seconds_in(spec.catchup_window)),
        ),
        state=ScheduleState(
            paused=not spec.enabled,
            note=f"enabled = false in {registry.path.name}" if not spec.enabled else "",
        ),
    )


class Change(BaseModel):
    job: str
    action: Literal["create", "update", "delete", "unchanged"]
    detail: str = ""


async def managed(client: Client, registry: str) -> dict[str, str]:
    """Keel's schedules of this registry on the server, by job name (the schedule id)."""
    found: dict[str, str] = {}
    async for listed in await client.list_schedules():
        if not listed.id.startswith(SCHEDULE_PREFIX):
            continue
        memo = await listed.memo()
        if memo.get(MARKER) == registry:
            found[listed.id.removeprefix(SCHEDULE_PREFIX)] = listed.id
    return found


async def describe(client: Client, job: str) -> ScheduleDescription | None:
    """The job's schedule as the server has it now (None if there is none)."""
    try:
        return await client.get_schedule_handle(schedule_id(job)).describe()
    except RPCError as err:
        # A deleted schedule's workflow may still answer, "already completed", for a while.
        if err.status == RPCStatusCode.NOT_FOUND or "already completed" in err.message:
            return None
        raise


async def made_from(client: Client, described: ScheduleDescription) -> str | None:
    """The fingerprint the schedule was made from (None for a schedule Keel did not make)."""
    action = described.schedule.action
    if not isinstance(action, ScheduleActionStartWorkflow) or not action.memo:
        return None
    raw = action.memo.get(HASH)  # described, the memo holds the payloads as stored
    if not isinstance(raw, Payload):
        return None
    (value,) = await client.data_converter.decode([raw])
    return str(value)


async def sync(
    client: Client, registry: Registry, task_queue: str, dry_run: bool = False
) -> list[Change]:
    """Make the server's schedules match the file: create what is new, update what changed
    (pausing or resuming as `enabled` says), delete this registry's jobs the file dropped.
    Idempotent: a second sync changes nothing. A job paused by `jobs pause` stays paused
    until its entry in the file changes."""
    status_attribute = await status_attribute_registered(client)
    changes: list[Change] = []
    for name, job in registry.jobs.items():
        schedule = schedule_of(job, registry, task_queue, status_attribute)
        described = await describe(client, name)
        if described is None:
            changes.append(Change(job=name, action="create", detail=when(job.spec)))
            if not dry_run:
                await create(client, job, schedule, registry)
            continue
        if (await described.memo()).get(MARKER) != registry.name:
            raise RegistryError(
                f"{registry.path}: job {name!r}: schedule {job.schedule_id} exists on the "
                "server and is not this registry's: rename the job or remove that schedule"
            )
        if await made_from(client, described) == job.fingerprint(task_queue):
            changes.append(Change(job=name, action="unchanged"))
            continue
        changes.append(Change(job=name, action="update", detail=when(job.spec)))
        if not dry_run:
            await client.get_schedule_handle(job.schedule_id).update(replace_with(schedule))
    for name, sid in sorted((await managed(client, registry.name)).items()):
        # The list lags (visibility): a schedule just deleted may still be listed.
        if name not in registry.jobs and await describe(client, name) is not None:
            changes.append(Change(job=name, action="delete"))
            if not dry_run:
                await client.get_schedule_handle(sid).delete()
    return changes


async def create(client: Client, job: Job, schedule: Schedule, registry: Registry) -> None:
    try:
        await client.create_schedule(
            job.schedule_id, schedule, memo={MARKER: registry.name, "keel_job": job.name}
        )
    except ScheduleAlreadyRunningError:  # another sync won the race: update what it made
        await client.get_schedule_handle(job.schedule_id).update(replace_with(schedule))


def replace_with(schedule: Schedule) -> Any:
    def updater(_: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=schedule)

    return updater


def when(spec: JobSpec) -> str:
    every = f"every {spec.every}" if spec.every else f"cron {spec.cron!r}"
    zone = f" ({spec.timezone})" if spec.timezone != "UTC" else ""
    zone += f", jitter {spec.jitter}" if spec.jitter else ""
    paused = ", paused (enabled = false)" if not spec.enabled else ""
    return f"{every}{zone}, {spec.mode}{paused}"


class LastRun(BaseModel):
    run_id: str
    status: str
    at: datetime | None = None
    summary: str = ""
    blocked: str = ""  # the run was skipped: by which job, and why


class JobRow(BaseModel):
    """One job as `starter.py jobs` shows it: what state it is in, and why."""

    job: str
    state: Literal["due", "running", "waiting_on_you", "blocked", "draft", "paused", "skipped"]
    why: str = ""
    mode: Literal["live", "draft"] = "live"
    schedule: str = ""
    next_fire: datetime | None = None
    last_run: LastRun | None = None
    skipped_fires: int = 0  # fires the overlap policy or the catch-up window dropped


async def job_rows(client: Client, registry: Registry) -> list[JobRow]:
    """Each job of the file, with its state: paused, waiting_on_you, running, blocked (a job
    it waits on did not end DONE), skipped (its last run was), draft, or due."""
    rows: dict[str, JobRow] = {}
    last_status: dict[str, str] = {}
    for name, job in registry.jobs.items():
        described = await describe(client, name)
        row = JobRow(job=name, state="due", mode=job.spec.mode, schedule=when(job.spec))
        rows[name] = row
        if described is None:
            row.state, row.why = "paused", "not on the server: run `starter.py jobs sync`"
            continue
        info = described.info
        row.next_fire = info.next_action_times[0] if info.next_action_times else None
        row.skipped_fires = (
            info.num_actions_skipped_overlap + info.num_actions_missed_catchup_window
        )
        runs = await recent_runs(client, name) or []
        if runs:
            row.last_run = await last_run(client, runs[0])
            last_status[name] = row.last_run.status
        if described.schedule.state.paused:
            row.state, row.why = "paused", described.schedule.state.note or "paused"
            row.next_fire = None
        elif row.last_run is not None and row.last_run.status == "WAITING_ON_YOU":
            row.state, row.why = "waiting_on_you", row.last_run.summary
        elif row.last_run is not None and row.last_run.status == "RUNNING":
            row.state, row.why = "running", row.last_run.run_id
    for name, row in rows.items():
        if row.state != "due":
            continue
        spec = registry.jobs[name].spec
        blockers = [
            f"{b} ({last_status.get(b, 'never ran')})"
            for b in spec.blocked_by
            if last_status.get(b) != "DONE"
        ]
        if blockers:
            row.state, row.why = "blocked", "blocked by " + ", ".join(blockers)
        elif row.last_run is not None and row.last_run.blocked:
            row.state, row.why = "skipped", row.last_run.blocked
        elif spec.mode == "draft":
            row.state, row.why = "draft", "writes are recorded, not made"
    return list(rows.values())


async def last_run(client: Client, run_id: str) -> LastRun:
    status, report = await closed_report(client, run_id)
    if status == WorkflowExecutionStatus.RUNNING:
        report = await get_report(client, run_id)  # RUNNING or WAITING_ON_YOU, and for what
        line = report.pending.reason if report.pending else "running"
        return LastRun(run_id=run_id, status=report.status, at=fired_at(run_id), summary=line)
    if report is None:
        return LastRun(
            run_id=run_id, status="gone", at=fired_at(run_id), summary=said(status, None)
        )
    return LastRun(
        run_id=run_id,
        status=report.status,
        at=fired_at(run_id),
        summary=report.summary or report.reason,
        blocked=report.blocked,
    )


def fired_at(run_id: str) -> datetime | None:
    """A job run's fire time, from its id (job.NAME-2026-11-29T03:00:00Z)."""
    stamp = run_id[-20:]
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


async def fire(client: Client, job: str) -> None:
    """Fire the job now (its overlap policy still applies)."""
    with job_must_exist(job):
        await client.get_schedule_handle(schedule_id(job)).trigger()


async def pause(client: Client, job: str, note: str) -> None:
    """Pause the job's schedule; it stays paused until resumed or its entry in the file
    changes and is synced."""
    with job_must_exist(job):
        await client.get_schedule_handle(schedule_id(job)).pause(note=note)


async def resume(client: Client, job: str, note: str) -> None:
    with job_must_exist(job):
        await client.get_schedule_handle(schedule_id(job)).unpause(note=note)


@contextmanager
def job_must_exist(job: str) -> Iterator[None]:
    try:
        yield
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise JobNotFound(
                f"no job {job!r} on the server (schedule {schedule_id(job)}): run "
                "`starter.py jobs sync`"
            ) from None
        raise


class FilesPruned(BaseModel):
    removed: int = 0
    bytes_removed: int = 0
    kept_for_open_runs: int = 0
    kept_young: int = 0


def job_folders(registry: Registry) -> set[Path]:
    """Where the registry's jobs write: their outboxes and output directories."""
    folders: set[Path] = set()
    for job in registry.jobs.values():
        assert job.run.job is not None
        folders |= {Path(c.dir) for c in job.run.job.channels if isinstance(c, OutboxChannel)}
        if job.run.job.output_dir:
            folders.add(Path(job.run.job.output_dir))
    return folders


def prune_job_files(
    registry: Registry, open_runs: set[str], older_than: float, dry_run: bool, now: float
) -> FilesPruned:
    """Remove the job runs' outbox files and outputs older than `older_than` seconds, except
    an open run's (each file is named by its run: job.NAME-<fire time>.*)."""
    result = FilesPruned()
    for folder in sorted(job_folders(registry)):
        for path in sorted(folder.glob(f"{RUN_PREFIX}*")) if folder.is_dir() else ():
            run_id = ".".join(path.name.split(".")[:2])
            stat = path.stat()
            if run_id in open_runs:
                result.kept_for_open_runs += 1
            elif stat.st_mtime >= now - older_than:
                result.kept_young += 1
            else:
                result.removed += 1
                result.bytes_removed += stat.st_size
                if not dry_run:
                    path.unlink(missing_ok=True)
    return result

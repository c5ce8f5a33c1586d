"""Background jobs: what a scheduled run knows of its job, and what it tells people.

A job's schedule (keel/jobs.py) starts an AgentWorkflow whose input carries a JobContext: the
run checks the jobs it is blocked by, may read its job's previous report, runs in draft mode
when asked, and notifies the job's channels when it waits on a human or ends.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer

from keel.workflows.contracts.base import RunStatus, _Frozen, _Strict

JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SCHEDULE_PREFIX = "keel-job."  # a job's schedule id: keel-job.NAME
RUN_PREFIX = "job."  # a job's runs: job.NAME-<fire time>, the suffix added by the schedule
PREVIOUS_CHARS = 2000  # what a run is told of its job's previous run, at most
NOTIFICATIONS_KEPT = 20  # a report keeps the newest notifications it sent
# `${NAME}` in a webhook's URL or headers: a secret's name, resolved by the activity only.
SECRET_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NotifyOn = Literal["ended", "waiting"]


def schedule_id(job: str) -> str:
    return SCHEDULE_PREFIX + job


def job_name(value: str) -> str:
    if not JOB_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a job name (lowercase letters, digits, '-' and '_', at most 63)"
        )
    return value


class _Channel(_Frozen):
    kind: str

    @model_serializer(mode="wrap")
    def _kind_always(self, handler: SerializerFunctionWrapHandler) -> Any:
        # The union of channels is told apart by `kind`: written even where it is the default
        # (Keel's payload converter leaves defaults out).
        data = handler(self)
        return {"kind": self.kind, **data} if isinstance(data, dict) else data


class OutboxChannel(_Channel):
    """One JSON and one Markdown file per notification, in `dir` (the embedded default)."""

    kind: Literal["outbox"] = "outbox"
    dir: str = Field(min_length=1)

    @property
    def label(self) -> str:
        return f"outbox:{self.dir}"


class WebhookChannel(_Channel):
    """An HTTP POST of JSON with a `text` field (what chat tools' incoming webhooks accept).
    The URL and header values may hold `${SECRET}` references, resolved by the activity: a
    chat tool's webhook URL is itself a secret."""

    kind: Literal["webhook"] = "webhook"
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not (value.startswith(("http://", "https://")) or value.startswith("${")):
            raise ValueError(f"{value!r} is not an http(s) URL or a ${{SECRET}} reference")
        return value

    @property
    def label(self) -> str:
        return f"webhook:{self.url}"  # secrets are still references here


Channel = Annotated[OutboxChannel | WebhookChannel, Field(discriminator="kind")]


class JobContext(_Frozen):
    """What a run started by a job's schedule knows of its job (from the registry file)."""

    name: str
    blocked_by: tuple[str, ...] = ()
    previous_run: bool = False  # the previous run's report summary goes into the model's context
    channels: tuple[Channel, ...] = ()
    notify_on: tuple[NotifyOn, ...] = ("ended", "waiting")
    output_dir: str | None = None  # the run's final report is written here as RUN_ID.json

    @field_validator("name")
    @classmethod
    def _job_name(cls, value: str) -> str:
        return job_name(value)


class JobGateRequest(_Strict):
    job: JobContext
    run_id: str


class JobGateAnswer(_Strict):
    """Whether the run may go on, and what it may know of its job's previous run."""

    blocked: str | None = None  # why not: the blocking jobs and their last runs
    previous: str | None = None  # "RUN_ID (STATUS): summary", at most PREVIOUS_CHARS


class Notification(_Strict):
    """One message about a job's run, for one channel."""

    channel: Channel
    job: str
    run_id: str
    event: NotifyOn
    status: RunStatus
    text: str  # one paragraph a person reads first
    reason: str = ""
    summary: str = ""
    draft: bool = False
    at: datetime


class NotificationState(_Strict):
    """A notification as the report shows it: a failing channel never fails the run."""

    channel: str
    event: NotifyOn
    ok: bool
    error: str = ""


class JobOutput(_Strict):
    """The final report, written to the job's output directory."""

    output_dir: str
    run_id: str
    report: dict[str, object]

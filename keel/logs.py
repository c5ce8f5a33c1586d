"""Logging for worker.py and starter.py: `--log-level` and `--log-format json|text`.

In JSON, every line is one object: time, level, logger, message, and the run it concerns
(`run_id`, from temporalio's workflow and activity loggers), with `step`, `tool` and `attempt`
where Keel knows them. Workflow code logs through `workflow.logger`, which stays silent while a
workflow replays, so a decision is logged once however often its history is replayed.

    configure_logging("info", "json")

Secret values a tool resolved in this process are redacted from every record (a filter on the
handler, so records of every logger pass it) and, in the worker, from whatever is printed to
stdout or stderr (`redact_output`). What Keel cannot redact: a secret a tool writes to its own
file or sends elsewhere, or one it reads by itself instead of through tool_context().secret.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from keel.activities.secrets import REDACTED, resolved_values
from keel.activities.settings import env_choice
from keel.telemetry import install_runtime

LogFormat = Literal["json", "text"]
LEVELS = ("debug", "info", "warning", "error")
# Fields Keel passes in `extra=` at its decision points.
KEEL_FIELDS = ("step", "tool", "attempt", "event", "outcome")


def run_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The run a record concerns, from the context temporalio's loggers attach."""
    fields: dict[str, Any] = {}
    wf = getattr(record, "temporal_workflow", None)
    act = getattr(record, "temporal_activity", None)
    if isinstance(wf, dict):
        fields["run_id"] = wf.get("workflow_id")
    elif isinstance(act, dict):
        fields["run_id"] = act.get("workflow_id")
        fields["tool"] = act.get("activity_type")
        fields["attempt"] = act.get("attempt")
    for name in KEEL_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    return fields


def _scrub(text: str) -> str:
    for secret in resolved_values():
        text = text.replace(secret, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """Replaces every secret value resolved in this process in a record's message and error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not resolved_values():
            return True
        record.msg, record.args = _scrub(record.getMessage()), None
        if record.exc_info:
            record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class _RedactingStream:
    """A text stream that redacts resolved secrets from what is written to it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(_scrub(text) if resolved_values() else text)
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def redact_output() -> None:
    """Redact resolved secrets from this process's stdout and stderr (tool code that prints)."""
    if not isinstance(sys.stdout, _RedactingStream):
        sys.stdout = _RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, _RedactingStream):
        sys.stderr = _RedactingStream(sys.stderr)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            # temporalio appends its context dict to the message; the fields carry it instead.
            "message": record.getMessage().split(" ({'", 1)[0],
        }
        line.update(run_fields(record))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        elif record.exc_text:
            line["error"] = record.exc_text.splitlines()[-1]
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).split(" ({'", 1)[0]
        run = run_fields(record).get("run_id")
        return f"{text} [run {run}]" if run else text


def configure_logging(
    level: str | None = None, fmt: str | None = None, *, default_level: str = "info"
) -> None:
    """Root logging to stderr; defaults from KEEL_LOG_LEVEL and KEEL_LOG_FORMAT (text)."""
    level = (level or env_choice("KEEL_LOG_LEVEL", default_level, LEVELS)).lower()
    fmt = (fmt or env_choice("KEEL_LOG_FORMAT", "text", ("json", "text"))).lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at info: useful at debug only.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    install_runtime()  # forwards the SDK core's lines; worker.py adds metrics


def add_logging_args(parser: Any) -> None:
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        default=None,
        help="debug, info, warning or error (default: $KEEL_LOG_LEVEL, else info for the "
        "worker and warning for the starter)",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=None,
        help="json: one object per line with run_id, step, attempt (default: $KEEL_LOG_FORMAT "
        "or text)",
    )

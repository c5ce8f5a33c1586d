"""Secrets by reference: workflows and plans carry a secret's NAME (`SecretRef`); only a running
activity resolves it, from the environment or from the JSON file named by KEEL_SECRETS_FILE
({"NAME": "value"}), at call time. A resolved value is redacted, whatever its length, from
everything that leaves the activity (its result, its errors, the files it reports touching)
and from every log line and print of the worker process (keel.logs).

    @tool
    def call_payroll(token: SecretRef) -> str:
        value = tool_context().secret(token)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

from keel.workflows.contracts import SECRET_PLACEHOLDER, SecretRef

REDACTED = "[redacted]"
# Every secret value resolved in this process: the worker's log filter and its stdout/stderr
# redact them (tool code may log or print what it resolved).
_RESOLVED: set[str] = set()


def file_secrets() -> dict[str, str]:
    path = os.environ.get("KEEL_SECRETS_FILE")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ApplicationError(
            f"KEEL_SECRETS_FILE {path} cannot be read as JSON: {type(err).__name__}",
            type="SecretMissing",
            non_retryable=True,
        ) from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def resolve(ref: SecretRef | str) -> str:
    name = ref.secret if isinstance(ref, SecretRef) else ref
    value = os.environ.get(name) or file_secrets().get(name)
    if not value:
        raise ApplicationError(
            f"secret {name!r} is not set on this worker (environment or KEEL_SECRETS_FILE)",
            type="SecretMissing",
            non_retryable=True,
        )
    _RESOLVED.add(value)
    return value


def fill_secrets(text: str) -> str:
    """`text` with each `${NAME}` replaced by that secret's value (a webhook's URL and headers,
    an MCP server's environment): the declaration, and so the history, holds only names."""
    return SECRET_PLACEHOLDER.sub(lambda m: resolve(m.group(1)), text)


def resolved_values() -> list[str]:
    """Every secret value resolved in this process, longest first."""
    return sorted(_RESOLVED, key=len, reverse=True)


def known_values(used: list[str]) -> list[str]:
    """The values to redact from one call's output: those it resolved and every value of
    KEEL_SECRETS_FILE, of any length (a 3-digit PIN is a secret too), longest first."""
    values = {*used, *file_secrets().values()}
    return sorted((v for v in values if v), key=len, reverse=True)


def redact(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret replaced, in every string inside it."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    return value

"""Secrets by reference: workflows and plans carry a secret's NAME (`SecretRef`); only a running
activity resolves it, from the environment or from the JSON file named by KEEL_SECRETS_FILE
({"NAME": "value"}), at call time. A resolved value is redacted from whatever the tool returns
(to the model, the history, the report) and from its error messages.

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

from workflows.contracts import SecretRef

REDACTED = "[redacted]"
MIN_REDACTED_LENGTH = 4  # shorter values would redact ordinary words


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
    return value


def known_values(used: list[str]) -> list[str]:
    values = {*used, *file_secrets().values()}
    return sorted((v for v in values if len(v) >= MIN_REDACTED_LENGTH), key=len, reverse=True)


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

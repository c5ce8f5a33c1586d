"""Acceptance checks that come with Keel; a user's own are declared the same way with `@check`.

{"criterion": "the statement exists", "check": "file_exists",
 "args": {"path": "out/statement.json", "parses_as": "json"}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from keel.activities.tool import check
from keel.workflows.contracts import CheckResult


@check
def file_exists(path: str, parses_as: Literal["json", "text"] | None = None) -> CheckResult:
    """The file exists, and if asked, parses as JSON or reads as UTF-8 text."""
    file = Path(path)
    if not file.is_file():
        return CheckResult(passed=False, detail=f"{path} does not exist")
    if parses_as is None:
        return CheckResult(passed=True, detail=f"{path} exists")
    try:
        text = file.read_text(encoding="utf-8")
        if parses_as == "json":
            json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return CheckResult(passed=False, detail=f"{path} does not parse as {parses_as}: {err}")
    return CheckResult(passed=True, detail=f"{path} exists and parses as {parses_as}")


BUILTIN_CHECKS = (file_exists,)

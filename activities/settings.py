"""Settings from KEEL_* variables, read one way: a bad value is one line naming the variable.
(In keel.activities because tools and stores read settings too; worker.py and starter.py use
the same functions.)

grace = env_number("KEEL_SHUTDOWN_GRACE", 5.0)            # SettingError if not a number >= 0
level = env_choice("KEEL_LOG_LEVEL", "info", LEVELS)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from keel.shared.errors import SettingError


def env_number(name: str, default: float, *, minimum: float = 0.0) -> float:
    """A number of at least `minimum` from `name`, or `default` when it is unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SettingError(f"{name} must be a number, not {text!r}") from None
    if not value >= minimum:  # also refuses nan
        raise SettingError(f"{name} must be at least {minimum:g}, not {text!r}")
    return value


def env_count(name: str, default: int, *, minimum: int = 0) -> int:
    """A whole number of at least `minimum` from `name`, or `default`."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < minimum:
        raise SettingError(f"{name} must be a whole number of at least {minimum}, not {text!r}")
    return int(text)


def env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    """One of `choices` (case-insensitive) from `name`, or `default`."""
    text = os.environ.get(name, "").strip().lower()
    if not text:
        return default
    if text not in choices:
        raise SettingError(f"{name} must be one of {', '.join(choices)}, not {text!r}")
    return text


DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def seconds_in(text: str) -> int:
    """Seconds in '7d', '12h', '30m' or '90s'; ValueError for anything else."""
    number, unit = text[:-1], text[-1:]
    if unit not in DURATION_UNITS or not number.isdigit():
        raise ValueError(f"{text!r} is not a duration like 7d, 12h, 30m or 90s")
    return int(number) * DURATION_UNITS[unit]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`prog: error: ...`, exit 2), like every
    other error of Keel's commands; --help still shows the usage."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)

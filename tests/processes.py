"""Real subprocesses for the tests: worker.py, starter.py and scripts, run as a user would."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def worker_env(address: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a worker process of a crash test runs with: its own ledger and blob store, and a
    short sticky timeout so the next worker takes a killed one's runs soon."""
    return {
        "TEMPORAL_ADDRESS": address,
        "KEEL_LEDGER_DB": str(tmp_path / "ledger.sqlite"),
        "KEEL_STORE_DIR": str(tmp_path / "blobs"),
        "KEEL_STICKY_TIMEOUT": "1",
        **extra,
    }


async def spawn(*argv: str, env: Mapping[str, str], stdout: int = asyncio.subprocess.PIPE,
                cwd: Path = ROOT) -> asyncio.subprocess.Process:  # fmt: skip
    """Start a command (from the project root unless told), its output piped, no stdin."""
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=child_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )


async def run(*argv: str, env: Mapping[str, str], timeout: float = 120, cwd: Path = ROOT) -> Result:
    """Run a command (from the project root unless told) without blocking the event loop
    (workers live on it)."""
    proc = await spawn(*argv, env=env, cwd=cwd)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return Result(proc.returncode or 0, out.decode(), err.decode())


async def starter(*args: str, env: Mapping[str, str], timeout: float = 120) -> Result:
    return await run(sys.executable, "starter.py", *args, env=env, timeout=timeout)


class WorkerProcess:
    """`python worker.py` in its own process, so a test can SIGKILL it like a crash would."""

    def __init__(self, env: Mapping[str, str], log: Path, *args: str) -> None:
        self.env, self.log, self.args = env, log, args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 60) -> None:
        with self.log.open("ab") as sink:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "worker.py",
                *self.args,
                cwd=ROOT,
                env=child_env(self.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        start = self.log.stat().st_size if self.log.exists() else 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while "keel worker ready" not in self.log.read_text()[start:]:
            if self.proc.returncode is not None or loop.time() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log.read_text()}")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no cleanup, exactly like a crash
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)

"""./temporal-dev: up is idempotent, status tells the truth, runs survive a server restart."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

from tests.processes import run, starter


def free_port_pair() -> int:
    """A port p with p and p+1000 (the web UI) both free."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 1000 > 65535:
            continue
        with socket.socket() as ui:
            try:
                ui.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


async def test_up_down_status_and_persistence(tmp_path: Path) -> None:
    port = free_port_pair()
    env = {"TEMPORAL_ADDRESS": f"localhost:{port}", "KEEL_TEMPORAL_DIR": str(tmp_path / "t")}
    try:
        assert (await run("./temporal-dev", "status", env=env)).code == 3
        up = await run("./temporal-dev", "up", env=env)
        assert up.code == 0, up
        assert f"up at localhost:{port}" in up.out
        assert f"web UI http://localhost:{port + 1000}" in up.out
        again = await run("./temporal-dev", "up", env=env)
        assert again.code == 0 and "already up" in again.out
        assert (await run("./temporal-dev", "status", env=env)).code == 0

        # A run with no worker stays RUNNING; it must still be there after a restart.
        run_id = f"persist-{uuid.uuid4().hex[:8]}"
        plan = tmp_path / "plan.json"
        plan.write_text(
            json.dumps(
                {
                    "goal": "g",
                    "steps": [{"title": "t", "tool": "get_balance", "args": {"account": "a"}}],
                }
            )
        )
        queue = {"KEEL_TASK_QUEUE": "no-worker-here"}
        started = await starter("run", "--plan", str(plan), "--id", run_id, env=env | queue)
        assert started.code == 0, started

        down = await run("./temporal-dev", "down", env=env)
        assert down.code == 0 and "stopped" in down.out
        assert (await run("./temporal-dev", "status", env=env)).code == 3
        assert (await run("./temporal-dev", "up", env=env)).code == 0

        status = await starter("status", run_id, "--json", env=env)
        assert status.code == 5, status  # RUNNING, and known to the restarted server
        assert json.loads(status.out)["status"] == "RUNNING"

        # Another state directory on the same port: that server is not its own to adopt or stop.
        other = env | {"KEEL_TEMPORAL_DIR": str(tmp_path / "other")}
        foreign = await run("./temporal-dev", "up", env=other)
        assert foreign.code == 1 and "another Temporal server already answers" in foreign.err
        left = await run("./temporal-dev", "down", env=other)
        assert left.code == 0 and "not ours: left alone" in left.out, left
        assert (await run("./temporal-dev", "status", env=env)).code == 0
    finally:
        await run("./temporal-dev", "down", env=env)

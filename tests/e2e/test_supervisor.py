"""The supervisor with a real llama-server and the bundled model: loading, ready,
a crash and its restart, stopping (also mid-request), and no orphan process, even
when the agent itself is killed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from corral.agent.lifecycle import Phase
from corral.agent.supervisor import ServerSettings, Supervisor
from corral.llamacpp import bundled_model

pytestmark = pytest.mark.e2e


def settings(**changes) -> ServerSettings:
    return ServerSettings(
        **{"model": bundled_model(), "slots": 1, "ctx_size": 512, "threads": 1, **changes}
    )


def alive(pid: int) -> bool:
    """Running, not a zombie (a reaped or dead-and-unreaped process counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except OSError:
        return False
    return state != "Z"


def reaped(pid: int) -> bool:
    """Gone from the process table, not even a zombie: its parent waited for it."""
    return not Path(f"/proc/{pid}").exists()


async def until(supervisor: Supervisor, check: Callable[[], bool], within: float) -> None:
    try:
        async with asyncio.timeout(within):
            while not check():
                await supervisor.wait_changed()
    except TimeoutError:
        raise AssertionError(f"timed out; now {supervisor!r} {supervisor.issues}") from None


async def health(port: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/health") as response,
    ):
        return response.status


async def long_request(port: int) -> None:
    """A completion that outlasts the test (the server dies under it). Not streamed:
    llama-server sits out a SIGTERM while it owes such a request its answer."""
    body = {"prompt": "Once upon a time", "n_predict": 400}
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(f"http://127.0.0.1:{port}/completion", json=body) as r:
                await r.read()
        except aiohttp.ClientError:
            pass


async def finish(request: asyncio.Task[None] | None) -> None:
    """End the request task: at once if its server is gone, else by cancelling it."""
    if request is not None:
        await asyncio.wait({request}, timeout=2)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request


async def busy(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(f"http://127.0.0.1:{port}/slots") as response:
                if any(slot["is_processing"] for slot in await response.json()):
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("the request never reached a slot")


async def test_loading_ready_crash_restart_and_stop(caplog):
    caplog.set_level(logging.INFO, logger="corral.llama-server")
    seen: list[tuple[Phase, str, tuple[str, ...]]] = []

    def record(s: Supervisor) -> None:
        seen.append((s.phase, s.condition, tuple(i.message for i in s.issues)))

    supervisor = Supervisor(settings(), name="gemma", on_change=record)
    try:
        await supervisor.start()
        assert supervisor.phase is Phase.STARTING and supervisor.condition == "loading"
        first_pid, first_port = supervisor.pid, supervisor.port
        assert first_pid is not None and first_port is not None and alive(first_pid)

        await until(supervisor, lambda: supervisor.phase is Phase.READY, 30)
        assert [phase for phase, *_ in seen] == [Phase.STARTING, Phase.READY]
        assert [condition for _, condition, _ in seen] == ["loading", "ready"]
        assert supervisor.load_time is not None and 0 < supervisor.load_time < 30
        assert await health(first_port) == 200
        assert supervisor.issues == [] and supervisor.restarts == 0
        assert f"READY pid {first_pid} port {first_port} restarts 0 load" in repr(supervisor)

        # the server's own log, line by line, under its name
        lines = [r.getMessage() for r in caplog.records if r.name == "corral.llama-server"]
        assert lines and all(line.startswith("[gemma] ") for line in lines)
        assert any("model loaded" in line for line in lines)

        # a crash: reported with its signal and last lines, then a restart
        seen.clear()
        os.kill(first_pid, signal.SIGKILL)
        await until(supervisor, lambda: supervisor.phase is Phase.BACKOFF, 10)
        (issue,) = supervisor.issues
        assert issue.code == "crashed"
        assert "status -9 (SIGKILL)" in issue.message and "last lines: " in issue.message
        assert supervisor.pid is None and supervisor.port is None

        await until(supervisor, lambda: supervisor.phase is Phase.READY, 30)
        assert [phase for phase, *_ in seen] == [Phase.BACKOFF, Phase.STARTING, Phase.READY]
        assert "SIGKILL" in seen[1][2][0]  # the issue stays visible while it reloads
        assert supervisor.restarts == 1 and supervisor.issues == []
        assert supervisor.pid not in (None, first_pid) and supervisor.port is not None
        assert await health(supervisor.port) == 200
        assert not alive(first_pid)
    finally:
        pid = supervisor.pid
        await supervisor.stop()
    assert supervisor.phase is Phase.STOPPED and supervisor.pid is None
    assert pid is not None and reaped(pid)
    await supervisor.stop()  # again: nothing to do


async def test_stop_kills_a_server_that_ignores_sigterm_mid_request(caplog):
    caplog.set_level(logging.INFO, logger="corral")
    supervisor = Supervisor(settings(), name="quiet", log_server_output=False, stop_timeout=1.0)
    await supervisor.start()
    request: asyncio.Task[None] | None = None
    try:
        await until(supervisor, lambda: supervisor.phase is Phase.READY, 30)
        pid, port = supervisor.pid, supervisor.port
        assert pid is not None and port is not None
        request = asyncio.create_task(long_request(port))
        await busy(port)
        started = time.monotonic()
        # two concurrent stops: both return once the process is reaped
        await asyncio.gather(supervisor.stop(), supervisor.stop())
        took = time.monotonic() - started
    finally:
        await supervisor.stop()
        await finish(request)
    assert reaped(pid)
    assert 1.0 <= took < 5, took  # SIGTERM was not enough: SIGKILL after stop_timeout
    assert any("SIGKILL" in r.getMessage() for r in caplog.records)
    # silenced: nothing in the log, but the lines are still kept for crash reports
    assert not [r for r in caplog.records if r.name == "corral.llama-server"]
    assert any("model loaded" in line for line in supervisor.last_lines)


async def test_missing_model_is_an_issue_not_an_exception(tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    supervisor = Supervisor(settings(model=missing), name="broken")
    await supervisor.start()  # does not raise
    try:
        assert supervisor.phase is Phase.BACKOFF and supervisor.condition == "error"
        (issue,) = supervisor.issues
        assert issue.code == "start_failed" and str(missing) in issue.message
        # it keeps retrying, with backoff (0.5 s, then 1 s)
        await until(supervisor, lambda: supervisor.restarts >= 2, 5)
        assert supervisor.phase is Phase.BACKOFF and supervisor.issues[0].code == "start_failed"
        assert supervisor.state.delay == 2
    finally:
        await supervisor.stop()
    assert supervisor.phase is Phase.STOPPED and supervisor.issues == []


async def test_missing_binary_is_an_issue_too(tmp_path):
    binary = tmp_path / "llama-server"
    supervisor = Supervisor(settings(binary=binary), name="broken")
    async with supervisor:
        (issue,) = supervisor.issues
        assert issue.code == "start_failed" and str(binary) in issue.message


AGENT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from corral.agent.lifecycle import Phase
    from corral.agent.supervisor import ServerSettings, Supervisor

    async def main():
        settings = ServerSettings(Path(sys.argv[1]), slots=1, ctx_size=512, threads=1)
        supervisor = Supervisor(settings, name="orphan", log_server_output=False)
        await supervisor.start()
        while supervisor.phase is not Phase.READY:
            await supervisor.wait_changed()
        print(supervisor.pid, supervisor.port, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_no_orphan_when_the_agent_is_killed_mid_request():
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT, str(bundled_model()), stdout=subprocess.PIPE
    )
    request: asyncio.Task[None] | None = None
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(agent.stdout.readline(), 30)
        pid, port = map(int, line.split())
        assert alive(pid)
        request = asyncio.create_task(long_request(port))
        await busy(port)  # a request in flight: llama-server would sit out a SIGTERM
        agent.kill()
        await agent.wait()
        for _ in range(100):  # 5 s
            if not alive(pid):
                break
            await asyncio.sleep(0.05)
        assert not alive(pid), "llama-server outlived its agent"
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        await finish(request)

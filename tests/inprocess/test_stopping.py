"""Ctrl-C on `corral balancer` and `corral agent`: real processes, a real SIGINT, the
words on their output (what they wait for, a countdown), and a second Ctrl-C that
stops them at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.harness import Harness, eventually

from corral.addr import Addr
from corral.agent import Agent, AgentConfig
from corral.llamacpp.process import free_port
from corral.shutdown import first_words, still_waiting

CHAT = "/v1/chat/completions"


def test_the_words():
    assert first_words("the balancer", "3 requests in flight to finish", 10) == (
        "Stopping the balancer: waiting for 3 requests in flight to finish (up to 10 s). "
        "Press Ctrl-C again to stop at once."
    )
    assert first_words("the agent", None, 10) == "Stopping the agent: nothing to wait for."
    assert still_waiting("1 request in flight", 5.6) == (
        "  still waiting for 1 request in flight, 6 s left"
    )
    assert still_waiting("x", -1).endswith("0 s left")


class Corral:
    """``python -m corral ARGS`` with its output collected (stdout and stderr)."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "corral", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = asyncio.get_running_loop().run_in_executor(None, self._read)

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for raw in self.process.stdout:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    async def wait_said(self, text: str, within: float = 15) -> None:
        await eventually(lambda: self.said(text), within=within, what=f"{text!r} in {self.lines}")

    async def exited(self, within: float) -> int:
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"still running; said {self.lines}"
            await asyncio.sleep(0.05)
        await self._reader
        return self.process.returncode

    async def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        await self._reader


async def _balancer_with_a_stream(
    harness: Harness, tmp_path: Path
) -> tuple[Corral, asyncio.Task[bytes]]:
    """A `corral balancer` process, a slow simulated server behind it (an agent in this
    process) and one streamed request in flight through it."""
    inference, management = free_port(), free_port()
    balancer = Corral(
        "balancer",
        "--inference-addr", f"127.0.0.1:{inference}",
        "--management-addr", f"127.0.0.1:{management}",
        "--state-file", str(tmp_path / "state.json"),
    )  # fmt: skip
    await balancer.wait_said("balancer up")
    _, port = await harness.sim(name="s", slots=1, tokens_per_second=10)
    agent = Agent(
        AgentConfig(
            local_llamacpp_addr=Addr("127.0.0.1", port),
            management_addrs=(Addr("127.0.0.1", management),),
            name="s",
            poll_interval=0.05,
        )
    )
    await agent.start()
    harness._stops.append(agent.stop)

    async def ready() -> bool:
        async with harness.http.get(f"http://127.0.0.1:{inference}/health") as r:
            return r.status == 200

    for _ in range(100):
        if await ready():
            break
        await asyncio.sleep(0.1)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "stream": True}
    first = asyncio.get_running_loop().create_future()

    async def stream() -> bytes:
        url = f"http://127.0.0.1:{inference}{CHAT}"
        async with harness.http.post(url, json=body) as r:
            first.set_result(await r.content.readline())
            return await r.read()

    task = asyncio.create_task(stream())
    await asyncio.wait_for(first, 10)
    return balancer, task


async def test_balancer_says_what_it_waits_for_and_lets_its_stream_end(harness, tmp_path):
    balancer, stream = await _balancer_with_a_stream(harness, tmp_path)
    try:
        balancer.process.send_signal(signal.SIGINT)
        await balancer.wait_said("Stopping the balancer: waiting for 1 request in flight")
        assert balancer.said("Press Ctrl-C again to stop at once.")
        await balancer.wait_said("still waiting for 1 request in flight to finish, 8 s left")
        assert b"[DONE]" in await asyncio.wait_for(stream, 10)  # it ran to its end
        assert await balancer.exited(10) == 0
    finally:
        await balancer.kill()


async def test_a_second_ctrl_c_stops_the_balancer_at_once(harness: Harness, tmp_path):
    balancer, stream = await _balancer_with_a_stream(harness, tmp_path)
    try:
        balancer.process.send_signal(signal.SIGINT)
        await balancer.wait_said("waiting for 1 request in flight")
        started = time.monotonic()
        balancer.process.send_signal(signal.SIGINT)
        assert await balancer.exited(5) == 128 + signal.SIGINT
        assert time.monotonic() - started < 3  # not the 10 s it would give the stream
        assert balancer.said("Second Ctrl-C: stopping at once.")
        assert not stream.cancelled()
        await asyncio.gather(stream, return_exceptions=True)  # cut off
    finally:
        await balancer.kill()


# a llama-server that answers /health and sits out SIGTERM, as one with a client does
FAKE_SERVER = """\
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
port = int(sys.argv[sys.argv.index("--port") + 1])

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


def _fake_server(tmp_path: Path) -> tuple[Path, Path]:
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    binary.chmod(0o755)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    return binary, model


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie waits for its parent (gone: init reaps it soon)
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] == "Z"


async def test_agent_counts_down_its_server_then_a_second_ctrl_c_stops_it(tmp_path):
    binary, model = _fake_server(tmp_path)
    agent = Corral(
        "agent",
        "--model", str(model),
        "--llama-server", str(binary),
        "--management-addr", f"127.0.0.1:{free_port()}",  # nobody there: it retries
        "--quiet-server",
    )  # fmt: skip
    try:
        await agent.wait_said(": ready")  # the supervisor's log line
        agent.process.send_signal(signal.SIGINT)
        await agent.wait_said("Stopping the agent: waiting for llama-server (pid ")
        line = next(x for x in agent.lines if "Stopping the agent" in x)
        pid = int(line.split("(pid ")[1].split(")")[0])
        assert "to exit (up to 10 s). Press Ctrl-C again to stop at once." in line
        await agent.wait_said(f"still waiting for llama-server (pid {pid}) to exit, ")
        assert not _gone(pid)  # it sits out SIGTERM
        agent.process.send_signal(signal.SIGINT)
        assert await agent.exited(5) == 128 + signal.SIGINT
        assert agent.said("Second Ctrl-C: stopping at once.")
        await eventually(lambda: _gone(pid), what="the server killed with its agent")
    finally:
        await agent.kill()

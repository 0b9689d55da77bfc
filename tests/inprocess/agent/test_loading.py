"""A supervised agent's cold start as the balancer sees it (copying the model with its
bytes, loading it, their durations), and draining before a pod goes (``POST /drain``,
``corral k8s drain``). The llama-server is a stand-in that runs the simulated server
(:mod:`support.fake_llama`)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from support.fake_llama import fake_llama_server
from support.harness import Harness, eventually, mgmt, url

from corral.addr import Addr
from corral.agent import Agent, AgentConfig
from corral.agent.supervisor import ServerSettings, Supervisor
from corral.llamacpp.sources import Progress, cache_atomically

MB = 1 << 20
CHAT = "/v1/chat/completions"


async def _agents(harness: Harness, balancer: Any) -> list[dict[str, Any]]:
    async with harness.http.get(mgmt(balancer, "/api/v1/agents")) as r:
        return list((await r.json())["agents"])


async def _supervised(
    harness: Harness,
    balancer: Any,
    tmp_path: Path,
    *,
    copy: Any = None,
    model: Path | None = None,
    **fake: Any,
) -> Agent:
    binary = fake_llama_server(tmp_path, log=tmp_path / "args.json", **fake)
    if model is None:
        model = tmp_path / "m.gguf"
        model.write_bytes(b"GGUF")
    server = Supervisor(
        ServerSettings(model=model, binary=binary, slots=1), name="m", log_server_output=False
    )
    config = AgentConfig(
        management_addrs=(Addr("127.0.0.1", balancer.management_port),),
        name="m",
        poll_interval=0.05,
        probe_addr=Addr("127.0.0.1", 0),
    )
    agent = Agent(config, server, copy)
    await agent.start()
    harness._stops.append(agent.stop)
    return agent


async def test_the_balancer_sees_copying_with_bytes_then_loading_then_both_times(
    harness: Harness, tmp_path: Path
):
    balancer = await harness.balancer()
    target = tmp_path / "cache" / "models" / "m.gguf"

    def write(path: Path) -> None:  # a copy that takes a while: 8 MB in 2.4 s
        with path.open("wb") as file:
            for _ in range(8):
                file.write(b"\0" * MB)
                file.flush()
                time.sleep(0.3)

    def copy(progress: Progress | None) -> Path:
        return cache_atomically(target, write, total=8 * MB, progress=progress)

    seen: list[dict[str, Any]] = []  # every report the balancer takes in
    report = balancer.fleet.report

    def record(agent_id: str, got: Any, now: float) -> Any:
        backend = report(agent_id, got, now)
        if got.supervisor is not None:
            seen.append(got.supervisor | {"_state": backend.state.value})
        return backend

    balancer.fleet.report = record  # type: ignore[method-assign]
    await _supervised(harness, balancer, tmp_path, copy=copy, model=target, loading_seconds=0.8)

    async def ready() -> bool:
        agents = await _agents(harness, balancer)
        return bool(agents) and agents[0]["state"] == "ready"

    await eventually(ready, within=20, what="the agent ready")
    copying = [s for s in seen if s.get("step") == "copying"]
    assert copying, seen
    assert all(s["state"] == "starting" and s["_state"] == "loading" for s in copying)
    assert {s.get("copy_bytes") for s in copying} <= {None, 8 * MB}  # None: not told yet
    assert any(0 < s["copied_bytes"] < 8 * MB for s in copying), copying  # progress, live
    steps = [s.get("step") for s in seen]
    assert "loading" in steps[steps.index("copying") :], steps  # then it loads
    done = seen[-1]
    assert "step" not in done and "copied_bytes" not in done
    assert 2.3 <= done["copy_time_s"] < 15
    assert 0.7 <= done["load_time_s"] < 10
    started_with = json.loads((tmp_path / "args.json").read_text())
    assert started_with[started_with.index("--model") + 1] == str(target)  # the copy


async def test_a_failed_copy_is_reported_and_starts_nothing(harness: Harness, tmp_path: Path):
    balancer = await harness.balancer()
    target = tmp_path / "cache" / "m.gguf"

    def copy(progress: Progress | None) -> Path:
        def write(path: Path) -> None:
            raise OSError("disk full")

        return cache_atomically(target, write, progress=progress)

    agent = await _supervised(harness, balancer, tmp_path, copy=copy, model=target)

    async def failed() -> dict[str, Any] | None:
        agents = await _agents(harness, balancer)
        return agents[0] if agents and agents[0]["state"] == "error" else None

    row = await eventually(failed, what="the agent in error")
    assert row["issues"][0]["code"] == "copy_failed"
    assert "disk full" in row["issues"][0]["message"]
    assert agent.server is not None and agent.server.pid is None  # nothing started


async def test_a_local_model_is_not_copied_and_loads(harness: Harness, tmp_path: Path):
    balancer = await harness.balancer()
    await _supervised(harness, balancer, tmp_path, loading_seconds=0.5)
    steps: list[str | None] = []

    async def ready() -> dict[str, Any] | None:
        agents = await _agents(harness, balancer)
        if agents and agents[0]["supervisor"]:
            steps.append(agents[0]["supervisor"].get("step"))
        return agents[0] if agents and agents[0]["state"] == "ready" else None

    row = await eventually(ready, within=10, what="the agent ready")
    assert "loading" in steps and "copying" not in steps
    assert "copy_time_s" not in row["supervisor"]  # served where it is


# ---------------------------------------------------------------- draining


async def _stream(harness: Harness, balancer: Any, tokens: int) -> asyncio.Task[bytes]:
    """A streamed request through the balancer, started (its first event read)."""
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens, "stream": True}
    first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run() -> bytes:
        async with harness.http.post(url(balancer, CHAT), json=body) as r:
            await r.content.readline()
            first.set_result(None)
            return await r.read()

    task = asyncio.create_task(run())
    await asyncio.wait_for(first, 10)
    return task


async def test_corral_k8s_drain_waits_for_requests_in_flight(harness: Harness, tmp_path: Path):
    balancer = await harness.balancer()
    agent = await _supervised(harness, balancer, tmp_path, tokens_per_second=10)
    await eventually(lambda: any(b.routable for b in balancer.fleet), within=10, what="ready")
    stream = await _stream(harness, balancer, 60)  # 6 s of tokens
    assert agent.probes is not None
    started = time.monotonic()
    drain = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral", "k8s", "drain", f"127.0.0.1:{agent.probes.port}",
        "--timeout", "30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip

    async def draining() -> bool:
        return (await _agents(harness, balancer))[0]["state"] == "draining"

    await eventually(draining, within=15, what="the backend draining")  # nothing new for it
    assert not stream.done() and drain.returncode is None  # the preStop hook waits
    out, _ = await asyncio.wait_for(drain.communicate(), 20)
    assert stream.done() and b"[DONE]" in stream.result()  # it ended first
    assert drain.returncode == 0, out
    assert out.decode().startswith("drained in ")
    answer = json.loads(out.decode().split(": ", 1)[1])
    assert answer["ok"] is True and 0.3 < answer["drained_s"] < 15  # it waited
    assert time.monotonic() - started > 1.5
    assert (await _agents(harness, balancer))[0]["state"] == "draining"  # until it stops


async def test_drain_gives_up_after_its_timeout(harness: Harness, tmp_path: Path):
    balancer = await harness.balancer()
    agent = await _supervised(harness, balancer, tmp_path, tokens_per_second=5)
    await eventually(lambda: any(b.routable for b in balancer.fleet), within=10, what="ready")
    stream = await _stream(harness, balancer, 50)  # 10 s of tokens
    assert agent.probes is not None
    probe = f"http://127.0.0.1:{agent.probes.port}/drain"
    async with harness.http.post(probe, params={"timeout": "x"}) as r:
        assert r.status == 400
        assert (await r.json())["reasons"] == ["timeout: not a number"]
    async with harness.http.post(probe, params={"timeout": "0.8"}) as r:
        assert r.status == 200
        answer = await r.json()
    assert 0.7 <= answer["drained_s"] < 3  # gave up: the stream runs on
    assert not stream.done()
    stream.cancel()


async def test_corral_k8s_drain_says_when_the_agent_cannot_be_reached():
    from corral.llamacpp.process import free_port

    drain = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral", "k8s", "drain", f"127.0.0.1:{free_port()}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(drain.communicate(), 20)
    assert drain.returncode == 1
    assert out.decode().startswith("corral k8s drain: http://127.0.0.1:")


async def test_a_server_that_never_started_is_not_logged_at_port_0(
    harness: Harness, tmp_path: Path, caplog: Any
):
    """Its log line named ``http://127.0.0.1:0``, an address nothing listens on."""
    import logging

    balancer = await harness.balancer()
    with caplog.at_level(logging.INFO, logger="corral.agent"):
        await _supervised(harness, balancer, tmp_path, model=tmp_path / "missing.gguf")
        await eventually(
            lambda: any("not found" in r.getMessage() for r in caplog.records),
            what="the failed start logged",
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("server ")]
    assert lines and all(":0" not in line for line in lines), lines
    assert any(line.startswith("server llama-server (not started): ") for line in lines), lines


def test_a_supervised_command_is_logged_at_the_address_it_was_given(caplog: Any) -> None:
    """Its address is the one given (``--server-addr``), whether it started or not."""
    import logging

    from corral.agent.supervisor import CommandSettings
    from corral.core.fleet import Condition
    from corral.protocol import messages as m

    settings = CommandSettings(command=("vllm", "serve"), port=8123, host="127.0.0.1")
    server = Supervisor(settings, name="v", log_server_output=False)
    config = AgentConfig(
        local_llamacpp_addr=Addr("127.0.0.1", 8123), management_addrs=(Addr("127.0.0.1", 1),)
    )
    agent = Agent(config, server)
    with caplog.at_level(logging.INFO, logger="corral.agent"):
        agent._log_change(m.ServerStatus(condition=Condition.READY, model="x", slots_total=4))
    assert "server http://127.0.0.1:8123: ready" in caplog.text, caplog.text
    assert "not started" not in caplog.text

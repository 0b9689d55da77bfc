"""Ctrl-C on `corral up`: it says what it waits for, and a second Ctrl-C stops at once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from support.harness import eventually

from corral.up import Fleet, UpConfig, _Child, stopping_message

# a balancer that takes its time to stop (SIGTERM is ignored: only SIGKILL ends it)
SLOW = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True);"
    " time.sleep(60)"
)
QUICK = "import time; time.sleep(60)"


def test_the_first_words_say_what_it_waits_for_and_how_to_skip():
    assert stopping_message(3, 10) == (
        "Stopping the fleet: waiting for 3 requests in flight to finish (up to 10 s). "
        "Press Ctrl-C again to stop at once."
    )
    assert "1 request in flight" in stopping_message(1, 10)
    assert "no request in flight" in stopping_message(0, 10)
    assert "lets requests in flight finish" in stopping_message(None, 10)


async def test_it_counts_down_then_a_second_ctrl_c_stops_everything_at_once(tmp_path):
    fleet = Fleet(UpConfig(), tmp_path / "llama-server", tmp_path / "m.gguf")  # not run
    fleet.logs = tmp_path
    balancer = _Child("balancer", [sys.executable, "-c", SLOW], tmp_path / "b.log")
    agent = _Child("agent-0", [sys.executable, "-c", QUICK], tmp_path / "a.log")
    fleet.children += [balancer, agent]
    await eventually(lambda: "up" in balancer.tail(), what="SIGTERM ignored")
    said: list[str] = []
    waiting = [3]

    async def in_flight() -> int:
        return waiting[0]

    started = time.monotonic()
    stop = asyncio.ensure_future(fleet.stop(in_flight=in_flight, say=said.append, every=0.2))
    await eventually(lambda: any("still waiting" in line for line in said), what="a countdown")
    assert said[0].startswith("Stopping the fleet: waiting for 3 requests in flight")
    assert "Press Ctrl-C again" in said[0]
    assert any(s.startswith("  still waiting for 3 requests in flight, ") for s in said), said
    assert balancer.process.poll() is None  # still waiting for it
    os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C
    await asyncio.wait_for(stop, timeout=5)
    assert "Second Ctrl-C: stopping everything now." in said
    assert balancer.process.poll() == -signal.SIGKILL
    assert agent.process.poll() is not None
    assert time.monotonic() - started < 8  # not the balancer's 15 s

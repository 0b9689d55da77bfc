"""`corral up`, the README's first command: a working fleet, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from support.procs import FULL_LENGTH, alive, get_json, wait_until

from corral.llamacpp.process import free_port

pytestmark = pytest.mark.e2e


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        for child in map(int, text):
            found += [child, *children(child)]
    return found


def printed_examples(banner: str) -> list[str]:
    """The shell commands under "Try it:", one per paragraph."""
    block = banner.split("Try it:", 1)[1].split("Press Ctrl-C", 1)[0]
    return [part.strip() for part in block.split("\n\n") if part.strip()]


def run_example(command: str) -> str:
    """Run a printed command in a shell, with this Python as ``python``; its stdout."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def test_up_serves_and_stops_without_leaving_a_process():
    inference, management = free_port(), free_port()
    up = subprocess.Popen(
        [
            sys.executable, "-m", "corral", "up",
            "--agents", "2", "--slots", "1",
            "--inference-addr", f"127.0.0.1:{inference}",
            "--management-addr", f"127.0.0.1:{management}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        lines = []
        for line in up.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        banner = "".join(lines)
        assert f"http://127.0.0.1:{inference}" in banner, banner
        assert "curl" in banner and "OpenAI(" in banner
        assert f"http://127.0.0.1:{management}/dashboard" in banner
        assert "Gemma 3 270M base" in banner

        # the examples it prints run as printed, and answer with text
        examples = printed_examples(banner)
        assert len(examples) == 2, banner
        curl = run_example(examples[0])
        assert json.loads(curl)["choices"][0]["text"].strip(), curl
        chat = run_example(examples[1])
        assert chat.strip() and "<|im_" not in chat and "<start_of_turn>" not in chat, chat

        status, health = get_json(f"http://127.0.0.1:{inference}/health")
        assert status == 200 and health["slots_idle"] == 2
        agents = get_json(f"http://127.0.0.1:{management}/api/v1/agents")[1]["agents"]
        assert sorted(a["name"] for a in agents) == ["local-0", "local-1"]
        body = json.dumps({"prompt": "Hello", "n_predict": 4, **FULL_LENGTH}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{inference}/completion", data=body)
        with urllib.request.urlopen(request, timeout=60) as reply:
            assert json.loads(reply.read())["tokens_predicted"] == 4
        # llama-server's own metrics, summed over the fleet (the servers run --metrics;
        # without it the inference listener answered 501 "Start it with `--metrics`")
        metrics = f"http://127.0.0.1:{inference}/metrics"
        with urllib.request.urlopen(metrics, timeout=30) as reply:
            assert "llamacpp:tokens_predicted_total" in reply.read().decode()

        spawned = children(up.pid)
        assert len(spawned) >= 5  # balancer, 2 agents, 2 llama-servers
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        wait_until(lambda: not any(alive(pid) for pid in spawned), 10, "children gone")
        said = up.stdout.read()
        assert "Stopping the fleet: no request in flight (up to 10 s)." in said, said
        assert "Press Ctrl-C again to stop at once." in said
        assert "Stopped." in said
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        up.stdout.close()

"""A mixed fleet behind one balancer, all real processes: a llama-server, a router-mode
llama-server serving two models, and llama-cpp-python's OpenAI-compatible server
(another runner, run by its agent from a command line: `corral agent --runner openai
... -- python -m llama_cpp.server ...`), each under its own model name. The official
openai SDK sees one list of models and each request lands on the server of its model.

llama-cpp-python comes from the `runners` extra (`scripts/install --with-runners`,
which scripts/test runs); it is built from source once per machine.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openai import OpenAI
from support.procs import Fleet, Proc, agents, free_port, get_json, models_dir, wait_until

from corral.llamacpp import bundled_model, llama_server_path

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def llama_cpp_python() -> None:
    # Fail loudly, never skip: scripts/test installs it (scripts/install --with-runners).
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail(
            "llama-cpp-python is not installed: run scripts/install --with-runners "
            "(scripts/test does)"
        )


@pytest.fixture(autouse=True)
def unbuffered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # llama-cpp-python's access log, line by line


def tokens_predicted(port: int) -> float:
    """llama-server's own count of generated tokens (``--metrics``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        text = answer.read().decode()
    found = re.search(r"^llamacpp:tokens_predicted_total (\S+)$", text, re.M)
    assert found, text
    return float(found.group(1))


def served(agent: Proc) -> int:
    """Requests llama-cpp-python's server answered: its access log, copied by the agent."""
    return len(re.findall(r'"POST /v1/(?:chat/)?completions HTTP/1\.1" 200', agent.tail(10_000)))


def llama_cpp_python_agent(fleet: Fleet, management: int, *server_args: str) -> Proc:
    """An agent that runs llama-cpp-python's server (the bundled model as ``pyllama``)
    from its command line, as docs/runners.md shows; ready when it returns."""
    port = free_port()
    agent = fleet._start(
        "agent-lcpp",
        [
            sys.executable, "-m", "corral", "agent",
            "--runner", "openai", "--concurrency", "1",
            "--server-addr", f"127.0.0.1:{port}",
            "--management-addr", f"127.0.0.1:{management}",
            "--name", "lcpp", "--poll-interval", "0.1",
            "--",
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(bundled_model()), "--model_alias", "pyllama",
            "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "1024", "--n_threads", "1", *server_args,
        ],
    )  # fmt: skip
    wait_until(lambda: agents(management).get("lcpp", {}).get("state") == "ready", 60, "lcpp")
    return agent


def test_three_runners_behind_one_balancer(fleet: Fleet, tmp_path: Path):
    _, inference, management = fleet.balancer()

    _, solo_port = fleet.llama_server("solo", 1, 1024, "--metrics")  # the bundled model's name
    fleet.agent("solo", solo_port, management)

    router_port = free_port()
    fleet._start(
        "router",
        [
            str(llama_server_path()),
            "--models-dir", str(models_dir(tmp_path)), "--models-max", "2",
            "--host", "127.0.0.1", "--port", str(router_port),
            "--parallel", "1", "--ctx-size", "1024", "--threads", "1",
        ],
    )  # fmt: skip
    wait_until(lambda: get_json(f"http://127.0.0.1:{router_port}/health")[0] == 200, 60, "router")
    fleet.agent("router", router_port, management)

    lcpp = llama_cpp_python_agent(fleet, management)  # its default settings

    sdk = OpenAI(base_url=f"http://127.0.0.1:{inference}/v1", api_key="none", max_retries=0)
    listed = [m.id for m in sdk.models.list().data]
    solo = bundled_model().stem
    assert sorted(listed) == sorted(["alpha", "beta", "pyllama", solo])  # each once

    where = {solo: "solo", "alpha": "router", "beta": "router", "pyllama": "lcpp"}
    for model, agent in where.items():
        before = (tokens_predicted(solo_port), served(lcpp))
        raw = sdk.completions.with_raw_response.create(
            model=model, prompt="The capital of France is", max_tokens=4
        )
        reply = raw.parse()
        assert (reply.model, raw.headers["x-corral-server"]) == (model, agent)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        assert reply.choices[0].text

        raw_stream = sdk.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": "Name a colour."}],
            max_tokens=4,
            stream=True,
        )
        assert raw_stream.headers["x-corral-server"] == agent
        chunks = list(raw_stream.parse())
        assert chunks and {c.model for c in chunks} == {model}
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")

        # the server of that model answered both, and no other server did
        if agent == "solo":
            assert tokens_predicted(solo_port) > before[0]
        else:
            assert tokens_predicted(solo_port) == before[0]
        if agent == "lcpp":
            wait_until(lambda b=before[1]: served(lcpp) == b + 2, 5, "lcpp's access log")
        else:
            assert served(lcpp) == before[1]
        if agent == "router":  # the router loaded it for these requests (it was unloaded)
            wait_until(
                lambda m=model: agents(management)["router"]["models"][m] == "loaded",
                10,
                f"{model} loaded",
            )

    # llama-cpp-python runs one request at a time: with --concurrency 1 the balancer holds
    # the second in its buffer, and the agent's reads (/health, once ready) take no model
    # lock, so they end no stream (as /v1/models did): both streams run to their end
    def stream(_: int) -> list:
        return list(
            sdk.completions.create(
                model="pyllama", prompt="Once upon a time", max_tokens=12, stream=True
            )
        )

    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(stream, range(2)))
    for chunks in both:
        assert chunks[-1].choices[0].finish_reason in ("length", "stop"), chunks[-1]


def test_llama_cpp_python_streams_run_to_their_end_with_its_default_settings(fleet: Fleet):
    """Found here: the agent read /v1/models every poll, which llama-cpp-python serves
    under its model lock, and by default (--interrupt_requests) that read ended the
    stream in flight after a few tokens (docs/runners.md)."""
    _, inference, management = fleet.balancer()
    llama_cpp_python_agent(fleet, management)
    sdk = OpenAI(base_url=f"http://127.0.0.1:{inference}/v1", api_key="none", max_retries=0)
    chunks = list(
        sdk.completions.create(
            model="pyllama", prompt="Once upon a time", max_tokens=48, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason in ("length", "stop"), chunks[-1]

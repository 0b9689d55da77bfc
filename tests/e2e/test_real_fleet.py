"""The proof on real parts: real llama-servers (Gemma 3 270M on CPU), real agents and
balancers as processes, the official OpenAI SDK and plain HTTP as clients."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from openai import OpenAI
from support.procs import FULL_LENGTH, Fleet, get_json, wait_until

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "Tell me a story about a cat."}]


def client(port: int) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)


def busy_slots(server_port: int) -> int:
    return sum(s["is_processing"] for s in get_json(f"http://127.0.0.1:{server_port}/slots")[1])


def test_openai_sdk_streaming_and_not_and_spread_by_free_slots(fleet: Fleet):
    _, a = fleet.llama_server("a", slots=2)
    _, b = fleet.llama_server("b", slots=2)
    _, inference, management = fleet.balancer()
    fleet.agent("a", a, management)
    fleet.agent("b", b, management)
    sdk = client(inference)

    # not streamed
    reply = sdk.chat.completions.create(
        model="gemma", messages=PROMPT, max_tokens=8, extra_body=FULL_LENGTH
    )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8

    # streamed, chunk by chunk
    chunks = list(
        sdk.chat.completions.create(model="gemma", messages=PROMPT, max_tokens=8, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and len(chunks) >= 8

    # four long requests on 2 x 2 slots: each server gets two (most free slots first).
    # First let the agents report the earlier requests as finished.
    wait_until(
        lambda: get_json(f"http://127.0.0.1:{inference}/health")[1].get("slots_idle") == 4,
        10,
        "an idle fleet",
    )
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(
                sdk.completions.create,
                model="x",
                prompt="Once upon",
                max_tokens=120,
                extra_body=FULL_LENGTH,
            )
            for _ in range(4)
        ]
        wait_until(lambda: busy_slots(a) + busy_slots(b) == 4, 30, "four busy slots")
        assert (busy_slots(a), busy_slots(b)) == (2, 2)
        for future in futures:
            assert future.result().usage.completion_tokens == 120


def test_more_requests_than_slots_all_succeed_through_the_buffer(fleet: Fleet):
    _, a = fleet.llama_server("a", slots=2)
    _, inference, management = fleet.balancer()
    fleet.agent("a", a, management)
    sdk = client(inference)
    peak = {"buffered": 0, "busy": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak["buffered"] = max(
                peak["buffered"],
                get_json(f"http://127.0.0.1:{management}/api/v1/buffered-requests")[1][
                    "buffered_requests"
                ],
            )
            peak["busy"] = max(peak["busy"], busy_slots(a))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(
                lambda _: sdk.completions.create(model="x", prompt="Hello", max_tokens=16),
                range(6),
            )
        )
    done.set()
    watcher.join()
    assert [r.usage.completion_tokens for r in results] == [16] * 6
    assert peak["buffered"] >= 1  # some waited in the buffer
    assert peak["busy"] <= 2  # and the server never had more than its slots


def test_killed_server_costs_no_request_that_had_not_started_streaming(fleet: Fleet):
    victim, a = fleet.llama_server("victim", slots=2)
    _, b = fleet.llama_server("survivor", slots=2)
    _, inference, management = fleet.balancer()
    fleet.agent("victim", a, management)
    fleet.agent("survivor", b, management)
    sdk = client(inference)
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(sdk.completions.create, model="x", prompt="Count:", max_tokens=40)
            for _ in range(8)
        ]
        wait_until(lambda: busy_slots(a) == 2, 30, "victim busy")
        victim.kill9()  # under load: 2 requests running on it, others running or buffered
        results = [f.result() for f in futures]  # none raises
    assert [r.usage.completion_tokens for r in results] == [40] * 8
    agents = get_json(f"http://127.0.0.1:{management}/api/v1/agents")[1]["agents"]
    victim_state = next(x for x in agents if x["name"] == "victim")
    assert victim_state["state"] == "error"
    assert victim_state["issues"][0]["code"] == "unreachable"


def test_new_server_takes_buffered_requests_at_once(fleet: Fleet):
    _, a = fleet.llama_server("first", slots=1)
    _, inference, management = fleet.balancer()
    fleet.agent("first", a, management)
    sdk = client(inference)
    with ThreadPoolExecutor(2) as pool:
        long = pool.submit(
            sdk.completions.create,
            model="x",
            prompt="Essay:",
            max_tokens=400,
            extra_body=FULL_LENGTH,
        )
        wait_until(lambda: busy_slots(a) == 1, 30, "first server busy")
        short = pool.submit(
            sdk.completions.create, model="x", prompt="Hi", max_tokens=4, extra_body=FULL_LENGTH
        )
        wait_until(
            lambda: (
                get_json(f"http://127.0.0.1:{management}/api/v1/buffered-requests")[1][
                    "buffered_requests"
                ]
                == 1
            ),
            10,
            "request buffered",
        )
        _, b = fleet.llama_server("second", slots=1)
        fleet.agent("second", b, management)
        assert short.result(timeout=30).usage.completion_tokens == 4
        assert not long.done()  # the buffered request did not wait for the long one
        assert long.result().usage.completion_tokens == 400


def test_scale_from_zero_and_plain_http(fleet: Fleet):
    _, inference, management = fleet.balancer()
    assert get_json(f"http://127.0.0.1:{inference}/health")[0] == 503
    body = json.dumps({"prompt": "Hello", "n_predict": 4, **FULL_LENGTH}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{inference}/completion", data=body)

    def send() -> dict:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read())

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(send)
        time.sleep(0.5)
        assert not pending.done()
        _, a = fleet.llama_server("late", slots=1)
        fleet.agent("late", a, management)
        assert pending.result()["tokens_predicted"] == 4


def test_two_level_balancer_tree(fleet: Fleet):
    _, a = fleet.llama_server("leaf", slots=2)
    _, child_inference, child_management = fleet.balancer("child")
    fleet.agent("leaf", a, child_management)
    _, parent_inference, parent_management = fleet.balancer("parent")
    fleet.agent("child", child_inference, parent_management)
    status, health = get_json(f"http://127.0.0.1:{parent_inference}/health")
    assert status == 200 and health["slots_idle"] == 2
    sdk = client(parent_inference)
    reply = sdk.chat.completions.create(
        model="gemma", messages=PROMPT, max_tokens=6, extra_body=FULL_LENGTH
    )
    assert reply.usage.completion_tokens == 6
    chunks = list(sdk.completions.create(model="gemma", prompt="Hi", max_tokens=6, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) >= 5

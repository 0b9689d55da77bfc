"""Changing what the fleet runs, from the balancer, without dropping a request."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.procs import FULL_LENGTH, Fleet, agents, get_json, wait_until

from corral.llamacpp import bundled_model

pytestmark = pytest.mark.e2e


def put_desired(management: int, state: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{management}/api/v1/desired-state",
        data=json.dumps(state).encode(),
        method="PUT",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_model_change_under_steady_load_fails_no_request(fleet: Fleet, tmp_path):
    _, inference, management = fleet.balancer()
    fleet.supervised_agent("a", management, slots=2)
    fleet.supervised_agent("b", management, slots=2)
    # "another model": the same weights under another name, so the model id changes
    other = tmp_path / "gemma-renamed.gguf"
    shutil.copyfile(bundled_model(), other)
    stop = threading.Event()
    outcomes: list[str] = []
    body = json.dumps({"prompt": "Hello", "n_predict": 8, **FULL_LENGTH}).encode()

    def user() -> None:
        while not stop.is_set():
            request = urllib.request.Request(f"http://127.0.0.1:{inference}/completion", body)
            try:
                with urllib.request.urlopen(request, timeout=60) as reply:
                    answer = json.loads(reply.read())
                outcomes.append("ok" if answer["tokens_predicted"] == 8 else "short")
            except Exception as exc:  # what a user would see
                outcomes.append(repr(exc))

    with ThreadPoolExecutor(3) as pool:
        users = [pool.submit(user) for _ in range(3)]
        time.sleep(1)
        desired = {"model": str(other), "slots": 3, "ctx_size": 512}
        status, answer = put_desired(management, desired)
        assert status == 200 and answer["generation"] == 1

        def all_applied() -> bool:
            listing = agents(management)
            return all(
                a["applied_generation"] == 1 and a["state"] == "ready" for a in listing.values()
            )

        wait_until(all_applied, 120, "every agent on generation 1")
        time.sleep(1)
        stop.set()
        for u in users:
            u.result()
    failures = [o for o in outcomes if o != "ok"]
    assert not failures, failures[:3]
    assert len(outcomes) > 10
    listing = agents(management)
    assert {a["slots_total"] for a in listing.values()} == {3}
    assert {a["model"] for a in listing.values()} == {"gemma-renamed"}
    _, state = get_json(f"http://127.0.0.1:{management}/api/v1/desired-state")
    assert state["desired"]["model"] == str(other)
    assert all(a["matches"] for a in state["agents"])


def test_a_bad_setting_is_rolled_back_with_the_reason(fleet: Fleet):
    _, inference, management = fleet.balancer()
    fleet.supervised_agent("a", management, slots=1)
    fleet.supervised_agent("b", management, slots=1)
    status, _ = put_desired(management, {"model": "/nowhere/missing.gguf"})
    assert status == 200

    def failed() -> dict | None:
        for agent in agents(management).values():
            if agent["state"] == "ready" and any(
                i["code"] == "apply_failed" for i in agent["issues"]
            ):
                return agent
        return None

    agent = wait_until(failed, 60, "a rolled-back agent")
    issue = next(i for i in agent["issues"] if i["code"] == "apply_failed")
    assert "/nowhere/missing.gguf" in issue["message"]
    desired = get_json(f"http://127.0.0.1:{management}/api/v1/desired-state")[1]
    assert desired["halted"] is True
    # the fleet still serves, on the old settings, every agent
    health = get_json(f"http://127.0.0.1:{inference}/health")[1]
    assert health["slots_idle"] + health["slots_processing"] == 2
    status, body = put_desired(management, {"model": 42})
    assert status == 400 and "$.model" in body["error"]["message"]

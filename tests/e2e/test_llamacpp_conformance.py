"""Through Corral, llama-server behaves as llama-server: each request is sent to one
real llama-server directly and through a balancer whose agent watches that same
server; both answers must have the same status and the same JSON structure.

Values are compared too where one server behind Corral must give the same ones
(props, models, tokenize...). What must differ is named here, once:

- ``EXTRA``: keys Corral adds (its own, under ``corral``; ``/health``'s slot counts);
- ``VARIES``: keys whose values differ between two calls anyway (ids, timings);
- generations are compared by structure only (types and keys, not text).

Where Corral differs from one server on purpose (fleet-wide aggregates, CORS
credentials off by default), ``docs/llamacpp.md`` says how. Cases follow llama.cpp's
own server tests (``tools/server/tests/unit``). One server, the bundled model, a few
tokens per generation: the suite takes well under a minute once the server is up.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from support.procs import Fleet, get_json, wait_until

pytestmark = pytest.mark.e2e

KEY = "conformance-key"
EXTRA = frozenset({"corral", "slots_idle", "slots_processing"})
VARIES = frozenset({"id", "created", "timings", "system_fingerprint", "t_save_ms", "save_ms"})
GREEDY = {"temperature": 0, "seed": 42}


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """``(direct, through Corral)``: a llama-server, and a balancer in front of it."""
    logs = tmp_path_factory.mktemp("conformance")
    saved = logs / "slots"
    saved.mkdir()
    procs = Fleet(logs)
    failed = True
    try:
        _, server = procs.llama_server(
            "server", 2, 512, "--metrics", "--slot-save-path", f"{saved}/", "--api-key", KEY
        )
        # credentials on, as llama-server's default, to compare like with like; Corral
        # refuses them with '*' (any page could use a visitor's credentials), so the
        # origin the CORS cases send is listed
        _, inference, management = procs.balancer(
            "balancer",
            "--api-key",
            KEY,
            "--cors-origins",
            "http://app.example",
            "--cors-credentials",
        )
        procs.agent("a", server, management, "--llamacpp-api-key", KEY)
        yield server, inference
        failed = False
    finally:
        procs.stop(failed=failed)


# ----------------------------------------------------------------- the client
def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    key: str | None = KEY,
) -> tuple[int, dict[str, str], bytes]:
    """One request; ``(status, headers with lower-case names, body)``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    try:
        conn.request(method, path, data, sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def both(ports: tuple[int, int], method: str, path: str, body: Any = None, **kw: Any) -> Any:
    direct, through = (call(port, method, path, body, **kw) for port in ports)
    assert through[0] == direct[0], (path, direct[2][:300], through[2][:300])
    return direct, through


def idle(ports: tuple[int, int]) -> None:
    """Wait until the server has no request in flight and Corral knows it."""

    def check() -> bool:
        _, slots = get_json_key(ports[0], "/slots")
        _, health = get_json(f"http://127.0.0.1:{ports[1]}/health")
        return not any(s["is_processing"] for s in slots) and health["slots_processing"] == 0

    wait_until(check, 30, "an idle server")


def get_json_key(port: int, path: str) -> tuple[int, Any]:
    status, _, body = call(port, "GET", path)
    return status, json.loads(body)


# -------------------------------------------------------------- comparisons
def same(direct: Any, through: Any, *, values: bool = True, where: str = "$") -> None:
    """``through`` has ``direct``'s structure (and values, unless ``values`` is false or
    the key is in ``VARIES``), plus at most the keys in ``EXTRA``."""
    if isinstance(direct, dict):
        assert isinstance(through, dict), where
        missing = set(direct) - set(through)
        added = set(through) - set(direct) - EXTRA
        assert not missing and not added, f"{where}: missing {missing}, added {added}"
        for key in direct:
            compare = values and key not in VARIES
            same(direct[key], through[key], values=compare, where=f"{where}.{key}")
    elif isinstance(direct, list):
        assert isinstance(through, list), where
        if values:
            assert len(direct) == len(through), where
            for index, (a, b) in enumerate(zip(direct, through, strict=True)):
                same(a, b, values=True, where=f"{where}[{index}]")
        else:
            assert bool(direct) == bool(through), where
            if direct:
                same(direct[0], through[0], values=False, where=f"{where}[0]")
    elif values:
        assert direct == through, f"{where}: {direct!r} != {through!r}"
    else:
        assert _kind(direct) == _kind(through), f"{where}: {direct!r} vs {through!r}"


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value) if value is None else "bool"
    return "number" if isinstance(value, int | float) else type(value).__name__


def same_json(pair: Any, *, values: bool = True) -> Any:
    direct, through = pair
    same(json.loads(direct[2]), json.loads(through[2]), values=values)
    return json.loads(through[2])


def events(body: bytes) -> tuple[list[str], list[Any], bool]:
    """An SSE body: its event names, its JSON data, whether it ended with [DONE]."""
    names, data, done = [], [], False
    for line in body.decode().splitlines():
        if line.startswith("event:"):
            names.append(line[6:].strip())
        elif line.startswith("data:"):
            text = line[5:].strip()
            if text == "[DONE]":
                done = True
            else:
                data.append(json.loads(text))
    return names, data, done


def same_stream(pair: Any) -> None:
    direct, through = (events(answer[2]) for answer in pair)
    assert "event-stream" in pair[1][1]["content-type"]
    assert direct[2] == through[2], "[DONE]"
    assert sorted(set(direct[0])) == sorted(set(through[0])), "event names"
    assert direct[1] and through[1]
    same(direct[1][0], through[1][0], values=False, where="first event")
    same(direct[1][-1], through[1][-1], values=False, where="last event")


# ---------------------------------------------------------------- the cases
def test_health(ports):
    same_json(both(ports, "GET", "/health", key=None))
    same_json(both(ports, "GET", "/v1/health", key=None))


def test_props_keep_every_field(ports):
    idle(ports)
    props = same_json(both(ports, "GET", "/props"))
    assert props["total_slots"] == 2 and props["corral"]["agents_ready"] == 1


def test_slots(ports):
    idle(ports)
    slots = same_json(both(ports, "GET", "/slots"))
    assert [s["id"] for s in slots] == [0, 1]


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_models_keep_the_servers_fields(ports, path):
    models = same_json(both(ports, "GET", path))
    assert models["data"][0]["meta"]["n_vocab"] > 0
    assert models["data"][0]["corral"] == {"agents": 1, "agents_ready": 1}


def test_tokenize_and_detokenize(ports):
    tokens = same_json(both(ports, "POST", "/tokenize", {"content": "Hello world"}))["tokens"]
    same_json(both(ports, "POST", "/tokenize", {"content": "Hello", "with_pieces": True}))
    same_json(both(ports, "POST", "/detokenize", {"tokens": tokens}))


def test_apply_template_and_count_tokens(ports):
    messages = [{"role": "user", "content": "Hi"}]
    same_json(both(ports, "POST", "/apply-template", {"messages": messages}))
    body = {"model": "x", "messages": messages, "max_tokens": 4}
    same_json(both(ports, "POST", "/v1/messages/count_tokens", body))


@pytest.mark.parametrize("path", ["/completion", "/completions", "/v1/completions"])
def test_completion(ports, path):
    body = {"prompt": "I believe the meaning of life is", "n_predict": 4, **GREEDY}
    if path == "/v1/completions":
        body = {"model": "x", "prompt": body["prompt"], "max_tokens": 4, **GREEDY}
    same_json(both(ports, "POST", path, body), values=False)
    same_stream(both(ports, "POST", path, {**body, "stream": True}))


def test_completion_with_n_probs_and_a_slot(ports):
    body = {"prompt": "Hello", "n_predict": 3, "n_probs": 2, "id_slot": 1, **GREEDY}
    answer = same_json(both(ports, "POST", "/completion", body), values=False)
    assert answer["id_slot"] == 1 and len(answer["completion_probabilities"]) == 3
    same_stream(both(ports, "POST", "/completion", {**body, "stream": True}))


def test_chat_completion(ports):
    body = {
        "model": "x",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 4,
        "logprobs": True,
        "top_logprobs": 2,
        **GREEDY,
    }
    same_json(both(ports, "POST", "/v1/chat/completions", body), values=False)
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    same_stream(both(ports, "POST", "/v1/chat/completions", stream))


def test_anthropic_messages(ports):
    body = {"model": "x", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    same_json(both(ports, "POST", "/v1/messages", body), values=False)
    same_stream(both(ports, "POST", "/v1/messages", {**body, "stream": True}))


def test_errors_keep_their_shape(ports):
    same_json(both(ports, "POST", "/completion", {"prompt": "x", "n_probs": "many"}), values=False)
    same_json(both(ports, "POST", "/v1/chat/completions", {"model": "x"}), values=False)


def test_slot_actions(ports):
    """Save, restore and erase a slot, directly and through Corral (fleet slot 1 is
    the server's slot 1: the fleet has one server)."""
    idle(ports)
    call(ports[0], "POST", "/completion", {"prompt": "Remember this", "n_predict": 1, "id_slot": 1})
    for action, body in (
        ("save", {"filename": "conformance.bin"}),
        ("restore", {"filename": "conformance.bin"}),
        ("erase", None),
    ):
        # values depend on the order (the second erase finds nothing): structure only
        pair = both(ports, "POST", f"/slots/1?action={action}", body)
        answer = same_json(pair, values=False)
        assert answer["id_slot"] == 1
    same_json(both(ports, "POST", "/slots/1?action=bogus"))


def test_metrics(ports):
    direct, through = both(ports, "GET", "/metrics")
    assert direct[1]["content-type"] == through[1]["content-type"]

    def types(text: bytes) -> list[str]:
        return [line for line in text.decode().splitlines() if line.startswith("# TYPE")]

    assert types(direct[2]) and types(direct[2]) == types(through[2])


@pytest.mark.parametrize(
    ("method", "path"), [("OPTIONS", "/v1/chat/completions"), ("GET", "/health")]
)
def test_cors(ports, method, path):
    headers = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    direct, through = both(ports, method, path, headers=headers, key=None)

    def cors(answer: Any) -> dict[str, str]:
        return {k: v for k, v in answer[1].items() if k.startswith("access-control-")}

    assert cors(direct) == cors(through)
    assert cors(through)["access-control-allow-origin"] == "http://app.example"


@pytest.mark.parametrize("path", ["/props", "/slots", "/v1/models", "/metrics"])
@pytest.mark.parametrize("key", [None, "wrong"])
def test_api_keys(ports, path, key):
    same_json(both(ports, "GET", path, key=key))
    direct, through = both(ports, "POST", "/completion", {"prompt": "x"}, key=key)
    same(json.loads(direct[2]), json.loads(through[2]))
    assert direct[0] == 401
    for port in ports:  # the key in X-Api-Key instead of Authorization
        assert call(port, "GET", path, headers={"X-Api-Key": KEY}, key=None)[0] == 200


def test_slots_disabled(fleet: Fleet):
    """``--no-slots``: 501 and llama-server's error, directly and through Corral."""
    _, server = fleet.llama_server("no-slots", 1, 256, "--no-slots")
    _, inference, management = fleet.balancer()
    fleet.agent("a", server, management)
    same_json(both((server, inference), "GET", "/slots", key=None))
    assert call(inference, "GET", "/slots", key=None)[0] == 501

"""The ticker backend's framing and counting (:mod:`comparison.ticker`), without
sockets."""

from __future__ import annotations

import json

import pytest

from comparison.ticker import (
    DONE,
    RESULT_MARK,
    ROLE_EVENT,
    STREAM_HEAD,
    TOKEN_CHUNK,
    TOKEN_EVENT,
    TOKEN_MARK,
    DriveResult,
    MarkCounter,
    chunk,
    final_events,
    info_bodies,
    parse_result,
    requested_tokens,
    stream_body,
)
from corral.agent.reader import Fetched, interpret
from corral.balancer.metrics import last_counted_event, token_counts


def _events(body: bytes) -> list[str]:
    assert body.endswith(b"\n\n")
    return [e.decode() for e in body[:-2].split(b"\n\n")]


def test_a_stream_is_role_tokens_final_and_done() -> None:
    events = _events(stream_body(3, 200.0))
    assert len(events) == 1 + 3 + 1 + 1
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    frames = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert all(f["object"] == "chat.completion.chunk" for f in frames)
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert [f["choices"][0]["delta"] for f in frames[1:4]] == [{"content": " tok"}] * 3
    last = frames[4]
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["timings"]["predicted_n"] == 3
    assert last["timings"]["predicted_ms"] == pytest.approx(15.0)


def test_the_token_mark_is_in_token_events_only() -> None:
    body = stream_body(5, 100.0)
    assert body.count(TOKEN_MARK) == 5
    assert TOKEN_EVENT.count(TOKEN_MARK) == 1
    assert TOKEN_MARK not in ROLE_EVENT and TOKEN_MARK not in final_events(5, 100.0)


def test_corral_counts_the_tokens_of_the_last_event() -> None:
    counted = last_counted_event(stream_body(7, 200.0))
    assert counted is not None
    assert token_counts(counted) == (9, 7)


def test_http_chunks() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255).startswith(b"ff\r\n")
    assert chunk(b"") == b"0\r\n\r\n"
    assert b"%x\r\n" % len(TOKEN_EVENT) + TOKEN_EVENT + b"\r\n" == TOKEN_CHUNK
    assert b"Transfer-Encoding: chunked\r\n" in STREAM_HEAD
    assert b"Content-Type: text/event-stream\r\n" in STREAM_HEAD
    assert STREAM_HEAD.endswith(b"\r\n\r\n")


def test_marks_split_across_pieces_are_counted_once() -> None:
    body = stream_body(40, 200.0)
    for size in (1, 2, 7, len(TOKEN_MARK) - 1, len(TOKEN_MARK), 100, 1000):
        counter = MarkCounter()
        found = sum(counter.feed(body[i : i + size]) for i in range(0, len(body), size))
        assert found == 40, size


def test_the_agent_reads_the_ticker_as_a_ready_llama_server() -> None:
    bodies = {path: json.loads(b) for path, b in info_bodies(12).items()}
    status = interpret(
        Fetched(200, bodies["/health"]),
        Fetched(200, bodies["/props"]),
        Fetched(200, bodies["/slots"]),
        Fetched(200, bodies["/v1/models"]),
    )
    assert status.condition == "ready", status
    assert status.slots_total == 12 and status.slots_processing == 0


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        (b'{"stream":true}', 50),
        (b'{"stream":true,"max_tokens":3}', 3),
        (b'{"stream":true,"max_tokens":0}', 50),
        (b'{"stream":true,"max_tokens":true}', 50),
        (b'{"stream":false}', None),
        (b'{"max_tokens":3}', None),
        (b"[1]", None),
        (b"not json", None),
    ],
)
def test_requested_tokens(body: bytes, tokens: int | None) -> None:
    assert requested_tokens(body, 50) == tokens


def test_parse_result_reads_the_last_line() -> None:
    result = DriveResult(4, 1.0, 100, 5, 0, 0, 20000, 90)
    text = (
        "go\nstop\n"
        + RESULT_MARK
        + json.dumps({f: getattr(result, f) for f in DriveResult.__dataclass_fields__})
    )
    assert parse_result(text) == result
    assert parse_result(text).tokens_per_second == 100.0
    with pytest.raises(ValueError):
        parse_result("go\n")
    assert DONE == b"data: [DONE]\n\n"

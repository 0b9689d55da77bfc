"""The bytes of the ticker's streams and the token counter
(:mod:`comparison.ticker.framing`)."""

from __future__ import annotations

import json

import pytest

from comparison.ticker.framing import (
    DONE,
    ROLE_EVENT,
    TOKEN_CHUNK,
    TOKEN_EVENT,
    TOKEN_MARK,
    MarkCounter,
    chunk,
    final_events,
    stream_body,
)
from corral.balancer.metrics import last_counted_event, read_counts


def _events(body: bytes) -> list[str]:
    assert body.endswith(b"\n\n")
    return [e.decode() for e in body[:-2].split(b"\n\n")]


def test_a_stream_is_role_tokens_final_and_done() -> None:
    body = stream_body(3, 200.0)
    events = _events(body)
    assert len(events) == 1 + 3 + 1 + 1
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert body.endswith(DONE) and DONE == b"data: [DONE]\n\n"
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
    assert read_counts(counted)[:2] == (9, 7)


def test_http_chunks() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255).startswith(b"ff\r\n")
    assert chunk(b"") == b"0\r\n\r\n"
    assert b"%x\r\n" % len(TOKEN_EVENT) + TOKEN_EVENT + b"\r\n" == TOKEN_CHUNK


def test_marks_split_across_pieces_are_counted_once() -> None:
    body = stream_body(40, 200.0)
    for size in (1, 2, 7, len(TOKEN_MARK) - 1, len(TOKEN_MARK), 100, 1000):
        counter = MarkCounter()
        found = sum(counter.feed(body[i : i + size]) for i in range(0, len(body), size))
        assert found == 40, size

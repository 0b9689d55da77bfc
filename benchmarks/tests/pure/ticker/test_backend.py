"""What the ticker's paced server answers (:mod:`comparison.ticker.backend`), without
sockets."""

from __future__ import annotations

import json

import pytest

from comparison.ticker.backend import STREAM_HEAD, info_bodies, requested_tokens
from corral.agent.runners.llamacpp import Fetched, interpret


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


def test_the_stream_head_announces_chunked_server_sent_events() -> None:
    assert b"Transfer-Encoding: chunked\r\n" in STREAM_HEAD
    assert b"Content-Type: text/event-stream\r\n" in STREAM_HEAD
    assert STREAM_HEAD.endswith(b"\r\n\r\n")


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

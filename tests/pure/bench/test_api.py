"""Request bodies for the three APIs, and reading streamed answers whatever the chunking."""

from __future__ import annotations

import json

import pytest

from corral.bench.api import (
    Cache,
    SSEParser,
    answer_text,
    answer_tokens,
    read_answer,
    read_event,
    request_body,
)
from corral.bench.workload import Call, Message

CALL = Call(
    index=0,
    messages=(Message("system", "be brief"), Message("user", "hello there")),
    max_tokens=12,
    stream=True,
)


def test_chat_body() -> None:
    body = json.loads(request_body(CALL, "chat", model="m", ignore_eos=True))
    assert body == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
        "max_tokens": 12,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


def test_completion_bodies() -> None:
    openai = json.loads(request_body(CALL, "completions", model=None, ignore_eos=False))
    assert openai == {
        "prompt": "be brief\nhello there",
        "max_tokens": 12,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    native = json.loads(request_body(CALL, "llamacpp", model=None, ignore_eos=True))
    assert native == {
        "prompt": "be brief\nhello there",
        "n_predict": 12,
        "stream": True,
        "ignore_eos": True,
    }


STREAM = (
    b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\r\n\r\n'
    b'data: {"choices":[],"usage":{"completion_tokens":2,"prompt_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 7, 64, len(STREAM)])
def test_the_parser_finds_the_same_events_whatever_the_chunking(size: int) -> None:
    parser = SSEParser()
    events = []
    for i in range(0, len(STREAM), size):
        events += parser.feed(STREAM[i : i + size])
    assert len(events) == 5
    read = [read_event(e) for e in events]
    assert [e.tokens for e in read] == [0, 1, 1, 0, 0]
    assert read[3].usage_tokens == 2
    assert read[4].done
    assert parser.pending == b""


def test_multi_line_data_and_comments() -> None:
    parser = SSEParser()
    assert parser.feed(b": keep-alive\n\nevent: x\ndata: a\ndata: b\n\n") == [b"a\nb"]
    assert parser.feed(b"data: {") == []
    assert parser.pending == b"data: {"


def test_llamacpp_events() -> None:
    assert read_event(b'{"content":"tok","stop":false}').tokens == 1
    last = read_event(b'{"content":"","stop":true,"tokens_predicted":9}')
    assert (last.tokens, last.done, last.usage_tokens) == (0, True, 9)


def test_errors_in_a_stream() -> None:
    assert read_event(b'{"error":{"message":"server went away"}}').error == "stream_error"
    assert read_event(b"not json").error == "bad_event"
    assert read_event(b"[1, 2]").error == "bad_event"


def test_completions_text_event() -> None:
    assert read_event(b'{"choices":[{"text":" tok1","index":0}]}').tokens == 1


def test_answer_tokens_of_whole_answers() -> None:
    assert answer_tokens(b'{"usage":{"completion_tokens":5}}') == 5
    assert answer_tokens(b'{"content":"x","timings":{"predicted_n":4}}') == 4
    assert answer_tokens(b"oops") is None


def test_cache_figures_come_from_timings_in_a_body_or_the_last_event() -> None:
    timings = {"cache_n": 1200, "prompt_n": 30, "predicted_n": 5}
    body = json.dumps({"choices": [], "usage": {"completion_tokens": 5}, "timings": timings})
    tokens, cache = read_answer(body.encode())
    assert tokens == 5 and cache == Cache(cached=1200, read=30) and cache.prompt == 1230
    event = read_event(json.dumps({"choices": [], "timings": timings}).encode())
    assert event.cache == Cache(1200, 30)
    assert read_event(b'{"choices": []}').cache is None
    assert read_answer(b'{"timings": {"cache_n": "x"}}') == (None, None)


def test_the_answers_text_from_each_api_whole_or_streamed() -> None:
    assert answer_text(b'{"choices":[{"message":{"role":"assistant","content":"hi you"}}]}') == (
        "hi you"
    )
    assert answer_text(b'{"choices":[{"text":" so it goes","index":0}]}') == " so it goes"
    assert answer_text(b'{"content":"llama words","stop":true}') == "llama words"
    for nothing in (b"oops", b"[1]", b'{"choices":[]}', b'{"choices":[{"message":{}}]}'):
        assert answer_text(nothing) is None
    assert read_event(b'{"choices":[{"delta":{"content":" tok"}}]}').text == " tok"
    assert read_event(b'{"choices":[{"text":" tok1","index":0}]}').text == " tok1"
    assert read_event(b'{"content":"tok","stop":false}').text == "tok"
    assert read_event(b'{"choices":[{"delta":{}}],"usage":{"completion_tokens":3}}').text == ""

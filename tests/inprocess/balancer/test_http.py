"""HTTP/1.1 on the inference listener, as a client sees it on the socket.

Where the bytes matter (keep-alive, pipelining, chunked bodies, ``Expect``, HTTP/1.0,
malformed input) the tests speak raw HTTP over ``asyncio.open_connection``, so they
hold whatever server runs under the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from support.harness import Harness, eventually, url

from corral.balancer import Balancer
from corral.sim import SimConfig, make_app

CHAT = "/v1/chat/completions"
TIMEOUT = 5.0

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop  # what the CLI runs on
except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
    pass

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def request(
    method: str, target: str, body: bytes = b"", *headers: str, version: str = "1.1"
) -> bytes:
    """The bytes of one request; ``Host`` and ``Content-Length`` are added as needed."""
    lines = [f"{method} {target} HTTP/{version}", *headers]
    if version == "1.1":
        lines.insert(1, "Host: corral.test")
    framed = any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers)
    if body and not framed:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def completion(*, stream: bool = False, n_predict: int = 4) -> bytes:
    return json.dumps({"prompt": "hi", "n_predict": n_predict, "stream": stream}).encode()


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """One response: its status line, its headers (lower-case names) and its body,
    de-chunked; a body with no framing is read until the server closes."""
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        status, *lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
            assert await reader.readuntil(b"\r\n") == b"\r\n"  # no trailers
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
    return status, headers, body


def status_of(status_line: bytes) -> int:
    match = re.fullmatch(rb"HTTP/1\.[01] (\d{3})(?: .*)?", status_line)
    assert match, status_line
    return int(match[1])


def events(body: bytes) -> list[dict[str, Any]]:
    lines = (line[6:] for line in body.split(b"\n") if line.startswith(b"data: "))
    return [json.loads(data) for data in lines if data.strip() != b"[DONE]"]


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (with nothing more to read)."""
    try:
        async with asyncio.timeout(2):
            return await reader.read() == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@contextlib.asynccontextmanager
async def connect(balancer: Balancer) -> AsyncIterator[Streams]:
    reader, writer = await asyncio.open_connection("127.0.0.1", balancer.inference_port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def one_server(
    harness: Harness, balancer: dict[str, Any] | None = None, **sim: Any
) -> Balancer:
    """A balancer with one simulated server, "s", behind it."""
    b = await harness.balancer(**(balancer or {}))
    _, port = await harness.sim(name="s", **sim)
    await harness.agent(port, b, name="s")
    return b


@dataclass
class Seen:
    """A request as the upstream server received it."""

    target: str  # path and query, as sent
    headers: CIMultiDictProxy[str]
    body: bytes


Recording = Callable[..., Awaitable[tuple[int, list[Seen]]]]


@pytest.fixture
async def recording() -> AsyncIterator[Recording]:
    """Starts simulated servers that record the POSTs they get and add a header of
    their own (``X-Upstream-Says``) to every response."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> tuple[int, list[Seen]]:
        seen: list[Seen] = []
        app = make_app(SimConfig(name="rec", tokens_per_second=1e6, **overrides))

        async def record(request: web.Request, response: web.StreamResponse) -> None:
            if request.method == "POST":  # the agent's polls are GETs
                seen.append(Seen(request.raw_path, request.headers, await request.read()))
            response.headers["X-Upstream-Says"] = "hello"

        app.on_response_prepare.append(record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner.addresses[0][1], seen

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_keep_alive_serves_a_whole_and_a_streamed_response_on_one_connection(
    harness: Harness,
):
    balancer = await one_server(harness, tokens_per_second=1000)
    async with connect(balancer) as (reader, writer):
        writer.write(request("POST", "/completion", completion()))
        status, headers, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 200")
        assert headers.get("connection", "").lower() != "close"
        assert json.loads(body)["tokens_predicted"] == 4

        writer.write(request("POST", "/completion", completion(stream=True)))
        status, headers, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 200")
        assert headers["content-type"].startswith("text/event-stream")
        assert headers.get("connection", "").lower() != "close"
        frames = events(body)
        assert [f["stop"] for f in frames] == [False] * 4 + [True]

        writer.write(request("GET", "/health"))  # and the connection is still good
        status, _, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["status"] == "ok"


async def test_pipelined_requests_are_answered_in_order(harness: Harness):
    balancer = await one_server(harness, tokens_per_second=50)
    async with connect(balancer) as (reader, writer):
        # the first takes ~0.1 s; the quick ones behind it must still come after it
        writer.write(
            request("POST", "/completion", completion(n_predict=5))
            + request("GET", "/health")
            + request("POST", "/tokenize", b'{"content": "hello"}')
        )
        answers = [await read_response(reader) for _ in range(3)]
    assert [status_of(status) for status, _, _ in answers] == [200, 200, 200]
    first, second, third = (json.loads(body) for _, _, body in answers)
    assert first["tokens_predicted"] == 5
    assert second["status"] == "ok"
    assert third["tokens"]


async def test_a_chunked_request_body_reaches_the_server_whole(
    recording: Recording, harness: Harness
):
    balancer = await harness.balancer()
    port, seen = await recording()
    await harness.agent(port, balancer, name="rec")
    body = b'{"content": "hello chunked world", "add_special": false}'
    async with connect(balancer) as (reader, writer):
        parts = chunked(body[:7], body[7:30], body[30:])
        writer.write(request("POST", "/tokenize", parts, "Transfer-Encoding: chunked"))
        status, _, answer = await read_response(reader)
    assert status_of(status) == 200, answer
    assert json.loads(answer)["tokens"]
    assert [s.body for s in seen] == [body]


async def test_expect_100_continue_is_answered_before_the_body_is_sent(harness: Harness):
    balancer = await one_server(harness)
    body = b'{"content": "hello"}'
    async with connect(balancer) as (reader, writer):
        head = request(
            "POST", "/tokenize", b"", "Expect: 100-continue", f"Content-Length: {len(body)}"
        )
        writer.write(head)
        async with asyncio.timeout(TIMEOUT):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(body)
        status, _, answer = await read_response(reader)
    assert status_of(status) == 200, answer
    assert json.loads(answer)["tokens"]


async def test_a_body_over_max_body_size_is_413_in_json(recording: Recording, harness: Harness):
    balancer = await harness.balancer(max_body_size=1000)
    port, seen = await recording()
    await harness.agent(port, balancer, name="rec")
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    for framing in ("length", "chunked"):
        async with connect(balancer) as (reader, writer):
            if framing == "length":
                writer.write(request("POST", CHAT, big))
            else:
                writer.write(request("POST", CHAT, chunked(big), "Transfer-Encoding: chunked"))
            status, headers, body = await read_response(reader)
        assert status_of(status) == 413, (framing, body)
        assert headers["content-type"].startswith("application/json")
        error = json.loads(body)["error"]
        assert error["code"] == 413
        assert "too large" in error["message"]
    assert seen == []  # nothing of it went upstream
    async with connect(balancer) as (reader, writer):  # and requests that fit still do
        writer.write(request("POST", "/tokenize", b'{"content": "hello"}'))
        status, _, _ = await read_response(reader)
        assert status_of(status) == 200


async def test_garbage_gets_400_and_a_closed_connection_and_nothing_else_breaks(
    harness: Harness,
):
    balancer = await one_server(harness)
    async with connect(balancer) as (reader, writer):
        writer.write(b"NOT HTTP\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status_of(status) == 400
        assert await closed_by_server(reader)
    async with connect(balancer) as (reader, writer):  # after a good exchange too
        writer.write(request("GET", "/health"))
        status, _, _ = await read_response(reader)
        assert status_of(status) == 200
        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status_of(status) == 400
        assert await closed_by_server(reader)
    async with connect(balancer) as (reader, writer):
        writer.write(request("POST", "/completion", completion()))
        status, _, body = await read_response(reader)
        assert status_of(status) == 200
        assert json.loads(body)["tokens_predicted"] == 4


async def test_http_1_0_and_connection_close_are_answered_then_closed(harness: Harness):
    balancer = await one_server(harness, tokens_per_second=1000)
    async with connect(balancer) as (reader, writer):
        writer.write(request("GET", "/health", version="1.0"))
        status, _, body = await read_response(reader)
        assert status_of(status) == 200
        assert json.loads(body)["status"] == "ok"
        assert await closed_by_server(reader)
    async with connect(balancer) as (reader, writer):  # a stream: no chunked framing in 1.0
        writer.write(request("POST", "/completion", completion(stream=True), version="1.0"))
        status, headers, body = await read_response(reader)
        assert status_of(status) == 200
        assert "chunked" not in headers.get("transfer-encoding", "")
        assert body.startswith(b"data: ")
        assert events(body)[-1]["stop"] is True
        assert await closed_by_server(reader)
    async with connect(balancer) as (reader, writer):
        writer.write(request("POST", "/completion", completion(), "Connection: close"))
        status, _, body = await read_response(reader)
        assert status_of(status) == 200
        assert json.loads(body)["tokens_predicted"] == 4
        assert await closed_by_server(reader)


async def test_query_strings_reach_the_server_unchanged(recording: Recording, harness: Harness):
    balancer = await harness.balancer()
    port, seen = await recording()
    await harness.agent(port, balancer, name="rec")
    query = "?a=1&b=x%20y&b=2&c=%26%3D%2B+&u=%C3%A9&empty=&flag&p=%2F%3F%zz"
    for path, body in (("/tokenize", b'{"content": "hi"}'), ("/completion", completion())):
        async with connect(balancer) as (reader, writer):
            writer.write(request("POST", path + query, body))
            status, _, answer = await read_response(reader)
        assert status_of(status) == 200, answer
    assert [s.target for s in seen] == ["/tokenize" + query, "/completion" + query]


async def test_headers_both_ways(recording: Recording, harness: Harness):
    balancer = await harness.balancer(api_keys=("k1",))
    port, seen = await recording(api_key="backend-key")
    await harness.agent(port, balancer, name="rec", llamacpp_api_key="backend-key")
    body = {"content": "hello"}
    sent = {"Authorization": "Bearer k1", "X-Custom": "1", "X-Request-Id": "req-42"}
    async with harness.http.post(url(balancer, "/tokenize"), json=body, headers=sent) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Upstream-Says"] == "hello"  # the server's own header
        assert r.headers["X-Request-Id"] == "req-42"
        assert r.headers["X-Corral-Server"] == "rec"
        assert float(r.headers["X-Corral-Buffer-Wait"]) >= 0
    upstream = seen[-1].headers
    assert upstream["X-Custom"] == "1"
    assert upstream["X-Request-Id"] == "req-42"
    assert upstream.getall("Authorization") == ["Bearer backend-key"]  # never the client's
    async with harness.http.post(
        url(balancer, "/tokenize"), json=body, headers={"x-api-key": "k1"}
    ) as r:
        assert r.status == 200
        request_id = r.headers["X-Request-Id"]  # made up by the balancer
    upstream = seen[-1].headers
    assert "X-Api-Key" not in upstream
    assert upstream["X-Request-Id"] == request_id


async def test_headers_the_balancer_sets_are_sent_once(harness: Harness):
    """A server that sets CORS and request-id headers itself: the client sees one
    value of each (browsers refuse a repeated Access-Control-Allow-Origin)."""
    balancer = await harness.balancer(cors_origins="http://dash.test")
    app = make_app(SimConfig(name="cors", tokens_per_second=1e6))

    async def own_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["X-Request-Id"] = "the-servers-own"

    app.on_response_prepare.append(own_headers)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await harness.agent(runner.addresses[0][1], balancer, name="cors")
        async with connect(balancer) as (reader, writer):
            for stream in (False, True):
                writer.write(
                    request("POST", "/completion", completion(stream=stream),
                            "Origin: http://dash.test", "X-Request-Id: mine")
                )  # fmt: skip
                head = await reader.readuntil(b"\r\n\r\n")
                assert status_of(head.split(b"\r\n")[0]) == 200
                raw_headers = head.lower()
                if stream:
                    await reader.readuntil(b"\r\n0\r\n\r\n")
                else:
                    length = re.search(rb"content-length: (\d+)", raw_headers)
                    assert length
                    await reader.readexactly(int(length[1]))
                assert raw_headers.count(b"access-control-allow-origin") == 1
                assert b"access-control-allow-origin: http://dash.test" in raw_headers
                assert raw_headers.count(b"x-request-id") == 1
                assert b"x-request-id: mine" in raw_headers
    finally:
        await runner.cleanup()


async def test_an_upgrade_offer_is_declined_and_the_request_served(
    recording: Recording, harness: Harness
):
    """Java's HTTP client offers ``Upgrade: h2c`` on plain http. The balancer keeps to
    HTTP/1.1 and answers the request (body included, which llhttp leaves unread),
    then the next request on the same connection."""
    balancer = await harness.balancer()
    port, seen = await recording()
    await harness.agent(port, balancer, name="rec")
    body = b'{"content": "hello upgrade"}'
    async with connect(balancer) as (reader, writer):
        offer = request("POST", "/tokenize", body, "Connection: Upgrade, HTTP2-Settings",
                        "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__")  # fmt: skip
        writer.write(offer[: len(offer) - 5])  # the body arrives in two pieces
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(offer[len(offer) - 5 :] + request("POST", "/tokenize", b'{"content": "x"}'))
        for expected in (body, b'{"content": "x"}'):
            status, headers, answer = await read_response(reader)
            assert status_of(status) == 200, answer
            assert "upgrade" not in headers
            assert seen[-1].body == expected
    assert "Upgrade" not in seen[0].headers and "HTTP2-Settings" not in seen[0].headers


async def test_head_is_answered_without_a_body_and_the_connection_goes_on(harness: Harness):
    balancer = await one_server(harness, tokens_per_second=1e6)
    async with connect(balancer) as (reader, writer):
        writer.write(request("HEAD", "/health") + request("HEAD", "/completion"))
        writer.write(request("GET", "/health"))
        head = await reader.readuntil(b"\r\n\r\n")
        assert status_of(head.split(b"\r\n")[0]) == 200 and b"Content-Length: " in head
        head = await reader.readuntil(b"\r\n\r\n")  # no body came between the two
        assert status_of(head.split(b"\r\n")[0]) == 405
        status, _, body = await read_response(reader)
        assert status_of(status) == 200 and json.loads(body)["status"] == "ok"


async def test_huge_headers_get_431(harness: Harness):
    balancer = await one_server(harness, tokens_per_second=1e6)
    async with connect(balancer) as (reader, writer):
        writer.write(
            request("GET", "/health", b"", *(f"X-Pad-{i}: {'a' * 1000}" for i in range(80)))
        )
        status, _, body = await read_response(reader)
        assert status_of(status) == 431
        assert "headers" in json.loads(body)["error"]["message"]


async def test_a_client_that_reads_nothing_does_not_pile_up_answers(harness: Harness):
    """Pipelined requests from a client that never reads: the balancer stops reading
    them instead of buffering every answer."""
    balancer = await one_server(harness, tokens_per_second=1e6, slots=64)
    async with connect(balancer) as (_, writer):
        burst = request("GET", "/slots") * 200
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                for _ in range(500):  # until the balancer stops reading (writes block)
                    writer.write(burst)
                    await writer.drain()
        held = sum(
            c.transport.get_write_buffer_size()
            for c in balancer._inference.connections  # type: ignore[union-attr]
            if c.transport is not None
        )
        writer.transport.abort()  # it could not flush what it still has to send
        assert held < 4 * 1024 * 1024, f"the balancer holds {held} bytes of answers"


@pytest.mark.parametrize("loop_factory", LOOPS.values(), ids=LOOPS.keys())
def test_client_leaving_mid_stream_logs_no_error_and_frees_the_slot(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], caplog: pytest.LogCaptureFixture
):
    """A client hanging up is routine: no error, no traceback. Run on both event
    loops (a sync test with its own loop): the CLI runs the balancer on uvloop."""
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        harness = Harness()
        try:
            balancer = await harness.balancer()
            _, port = await harness.sim(name="s", slots=1, tokens_per_second=1e4, n_ctx=100_000)
            await harness.agent(port, balancer, name="s")
            agent = next(iter(balancer.fleet))
            gc.collect()  # so that nothing left by an earlier test is logged now
            caplog.clear()
            for _ in range(8):  # the race with tokens in flight is not lost every time
                async with connect(balancer) as (reader, writer):
                    long = completion(stream=True, n_predict=50_000)
                    writer.write(request("POST", "/completion", long))
                    async with asyncio.timeout(TIMEOUT):
                        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                        await reader.readuntil(b"\n\n")  # the first event
                    assert agent.reserved == 1
                await eventually(lambda: agent.reserved == 0, within=2, what="slot freed")

            async def server_idle() -> bool:
                async with harness.http.get(f"http://127.0.0.1:{port}/slots") as r:
                    return not any(s["is_processing"] for s in await r.json())

            await eventually(server_idle, within=2, what="server slot freed")
            noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
            assert not noisy, [f"{r.name}: {r.getMessage()} {r.exc_info}" for r in noisy]
        finally:
            await harness.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(scenario())


async def test_idle_keep_alive_connections_do_not_hold_up_stopping(harness: Harness):
    balancer = await one_server(harness, balancer={"shutdown_timeout": 10})
    async with connect(balancer) as (used, writer), connect(balancer) as (silent, _):
        writer.write(request("GET", "/health"))
        status, _, _ = await read_response(used)
        assert status_of(status) == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(balancer.stop(), TIMEOUT)
        assert loop.time() - started < 2  # no request was running: no grace period
        assert await closed_by_server(used)
        assert await closed_by_server(silent)


async def test_a_client_that_stops_reading_stops_the_server_not_the_balancer(harness: Harness):
    """Back-pressure: a stream the client does not read waits in the server, not in
    the balancer's memory."""
    balancer = await harness.balancer()
    app = make_app(SimConfig(name="big", tokens_per_second=1e6))
    written = 0
    total = 64 * 1024 * 1024  # far more than loopback sockets buffer

    async def infill(request: web.Request) -> web.StreamResponse:
        nonlocal written
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        block = b"data: " + b"x" * 65536 + b"\n\n"
        while written < total:
            await response.write(block)
            written += len(block)
        await response.write_eof()
        return response

    app.router.add_post("/infill", infill)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await harness.agent(runner.addresses[0][1], balancer, name="big")
        async with connect(balancer) as (reader, writer):
            writer.write(request("POST", "/infill", b'{"input_prefix": "a"}'))
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.5)  # and read nothing meanwhile
            held = sum(
                c.transport.get_write_buffer_size()
                for c in balancer._inference.connections  # type: ignore[union-attr]
                if c.transport is not None
            )
            assert written < total / 4, f"the server wrote {written} bytes to nobody"
            assert held < 4 * 1024 * 1024, f"the balancer holds {held} bytes for the client"
            got = 0
            async with asyncio.timeout(30):
                while chunk := await reader.read(1 << 20):
                    got += len(chunk)
                    if chunk.endswith(b"\r\n0\r\n\r\n"):
                        break
            assert written >= total and got > written  # all of it, with chunk framing
    finally:
        await runner.cleanup()

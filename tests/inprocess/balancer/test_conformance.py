"""HTTP/1.1 conformance of the inference listener, pinned byte by byte.

Each row of the tables is a raw request and the outcome RFC 9112 asks of a proxy
(or the safest one where it leaves a choice). A rejected request must also close
the connection (its framing cannot be trusted, so neither can what follows it) and
must never reach a server: the backend here records every request the balancer
sends it, and a smuggled request hides behind most rejected ones. Most of these are
refused by llhttp itself, some by the balancer's own checks (``http_server``); the
table holds both, so a parser upgrade or leniency flag that weakens one fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from support.harness import Harness

from corral.balancer import Balancer
from corral.sim import SimConfig, make_app

TIMEOUT = 5.0
BODY = b'{"content": "hi"}'
SMUGGLED = (
    b'POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 25\r\n\r\n{"content": "smuggled!!"}'
)
"""A whole request hidden in the body or after the end of a rejected one."""


def head(*lines: str, target: str = "/tokenize", version: str = "1.1") -> bytes:
    return "\r\n".join([f"POST {target} HTTP/{version}", *lines, "", ""]).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED = chunk(BODY) + b"0\r\n\r\n"

REJECTED: list[tuple[str, bytes, int]] = [
    # Content-Length and Transfer-Encoding together (RFC 9112 §6.1): the classic
    # smuggle, where two parsers disagree on where the body ends.
    ("cl-then-te", head("Host: a", "Content-Length: 4", "Transfer-Encoding: chunked")
        + CHUNKED + SMUGGLED, 400),
    ("te-then-cl", head("Host: a", "Transfer-Encoding: chunked", "Content-Length: 4")
        + CHUNKED + SMUGGLED, 400),
    ("te-identity-with-cl", head("Host: a", "Transfer-Encoding: identity",
        f"Content-Length: {len(BODY)}") + BODY, 400),
    # Content-Length must be one run of digits (RFC 9110 §8.6)
    ("cl-twice-different", head("Host: a", f"Content-Length: {len(BODY)}",
        f"Content-Length: {len(BODY) + len(SMUGGLED)}") + BODY + SMUGGLED, 400),
    ("cl-twice-same", head("Host: a", f"Content-Length: {len(BODY)}",
        f"Content-Length: {len(BODY)}") + BODY, 400),
    ("cl-list", head("Host: a", f"Content-Length: {len(BODY)}, {len(BODY)}") + BODY, 400),
    ("cl-plus", head("Host: a", f"Content-Length: +{len(BODY)}") + BODY, 400),
    ("cl-minus", head("Host: a", "Content-Length: -1") + BODY, 400),
    ("cl-hex", head("Host: a", f"Content-Length: 0x{len(BODY):x}") + BODY, 400),
    ("cl-empty", head("Host: a", "Content-Length: ") + BODY, 400),
    ("cl-inner-space", head("Host: a", "Content-Length: 1 7") + BODY, 400),
    ("cl-overflow", head("Host: a", "Content-Length: 99999999999999999999999") + BODY, 400),
    ("cl-space-before-colon", head("Host: a", f"Content-Length : {len(BODY)}") + BODY, 400),
    # obsolete line folding (RFC 9112 §5.2: reject or replace; a proxy would forward
    # a value with a line break in it)
    ("obs-fold-space", head("Host: a", "X-Folded: one", " two", f"Content-Length: {len(BODY)}")
        + BODY, 400),
    ("obs-fold-tab", head("Host: a", "X-Folded: one", "\ttwo", f"Content-Length: {len(BODY)}")
        + BODY, 400),
    ("obs-fold-first-line", head(" X-Folded: one", "Host: a") , 400),
    # line endings: CRLF only. RFC 9112 §2.2 lets a recipient accept a bare LF; a
    # proxy that does and a server that does not read different messages.
    ("bare-lf", f"POST /tokenize HTTP/1.1\nHost: a\nContent-Length: {len(BODY)}\n\n".encode()
        + BODY, 400),
    ("bare-lf-one-header", f"POST /tokenize HTTP/1.1\r\nHost: a\nContent-Length: {len(BODY)}"
        "\r\n\r\n".encode() + BODY, 400),
    ("bare-lf-end-of-head", f"POST /tokenize HTTP/1.1\r\nHost: a\r\nContent-Length: "
        f"{len(BODY)}\r\n\n".encode() + BODY, 400),
    ("bare-cr", f"POST /tokenize HTTP/1.1\rHost: a\r\nContent-Length: {len(BODY)}"
        "\r\n\r\n".encode() + BODY, 400),
    ("bare-cr-in-value", head("Host: a", "X-A: b\rX-Injected: 1",
        f"Content-Length: {len(BODY)}") + BODY, 400),
    ("nul-in-value", head("Host: a", "X-A: b\x00c", f"Content-Length: {len(BODY)}") + BODY, 400),
    ("ctl-in-value", head("Host: a", "X-A: b\x01c", f"Content-Length: {len(BODY)}") + BODY, 400),
    ("bad-name", head("Host: a", "X(A): b", f"Content-Length: {len(BODY)}") + BODY, 400),
    # chunk sizes: hex digits, within 64 bits, then CRLF; the data then CRLF
    ("chunk-size-not-hex", head("Host: a", "Transfer-Encoding: chunked")
        + b"zz\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    ("chunk-size-overflow", head("Host: a", "Transfer-Encoding: chunked")
        + b"1" + b"0" * 16 + b"11\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    ("chunk-size-negative", head("Host: a", "Transfer-Encoding: chunked")
        + b"-11\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    ("chunk-size-0x", head("Host: a", "Transfer-Encoding: chunked")
        + b"0x11\r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    ("chunk-size-space", head("Host: a", "Transfer-Encoding: chunked")
        + b"11 \r\n" + BODY + b"\r\n0\r\n\r\n", 400),
    ("chunk-data-no-crlf", head("Host: a", "Transfer-Encoding: chunked")
        + b"11\r\n" + BODY + b"0\r\n\r\n", 400),
    ("chunk-bare-lf", head("Host: a", "Transfer-Encoding: chunked")
        + b"11\n" + BODY + b"\n0\n\n", 400),
    # transfer codings: chunked only (RFC 9112 §6.1: 501 for one not understood)
    ("te-gzip", head("Host: a", "Transfer-Encoding: gzip") + BODY, 501),
    ("te-gzip-chunked", head("Host: a", "Transfer-Encoding: gzip, chunked") + CHUNKED, 501),
    ("te-gzip-then-chunked-headers", head("Host: a", "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked") + CHUNKED, 501),
    ("te-chunked-gzip", head("Host: a", "Transfer-Encoding: chunked, gzip") + CHUNKED, 400),
    ("te-chunked-twice", head("Host: a", "Transfer-Encoding: chunked, chunked") + CHUNKED, 400),
    ("te-chunked-two-headers", head("Host: a", "Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked") + CHUNKED, 400),
    ("te-xchunked", head("Host: a", "Transfer-Encoding: xchunked") + CHUNKED, 501),
    ("te-empty", head("Host: a", "Transfer-Encoding: ") + CHUNKED, 400),
    ("te-in-http-1.0", head("Transfer-Encoding: chunked", version="1.0") + CHUNKED, 400),
    # Host (RFC 9112 §3.2): exactly one in HTTP/1.1, and a valid one
    ("host-missing", head(f"Content-Length: {len(BODY)}") + BODY, 400),
    ("host-twice", head("Host: a", "Host: b", f"Content-Length: {len(BODY)}") + BODY, 400),
    ("host-twice-same", head("Host: a", "Host: a", f"Content-Length: {len(BODY)}") + BODY, 400),
    ("host-twice-http-1.0", head("Host: a", "Host: b", f"Content-Length: {len(BODY)}",
        version="1.0") + BODY, 400),
    ("host-with-space", head("Host: a b", f"Content-Length: {len(BODY)}") + BODY, 400),
    ("host-with-userinfo", head("Host: u@a", f"Content-Length: {len(BODY)}") + BODY, 400),
    ("host-with-slash", head("Host: a/b", f"Content-Length: {len(BODY)}") + BODY, 400),
    # the request line
    ("target-fragment", head("Host: a", f"Content-Length: {len(BODY)}",
        target="/tokenize#x") + BODY, 400),
    ("target-space", head("Host: a", f"Content-Length: {len(BODY)}",
        target="/tokenize x") + BODY, 400),
    ("target-non-ascii", head("Host: a", f"Content-Length: {len(BODY)}",
        target="/tokenize\xe9") + BODY, 400),
    ("version-1.2", head("Host: a", f"Content-Length: {len(BODY)}", version="1.2") + BODY, 400),
    ("version-2.0", head("Host: a", f"Content-Length: {len(BODY)}", version="2.0") + BODY, 505),
    # no version: llhttp reads HTTP/0.9; nginx and HAProxy answer 400 (a 505 was the fuzz's find)
    ("version-missing", b"GET /health\r\n\r\n", 400),
    ("version-missing-post", b"POST /tokenizeHTTP/1.1\r\nHost: a\r\n"
        + f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY, 400),
    ("version-0.9", head("Host: a", f"Content-Length: {len(BODY)}", version="0.9") + BODY, 400),
    ("lower-case-method", b"post /tokenize HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n"
        + BODY, 400),
]  # fmt: skip

ACCEPTED: list[tuple[str, bytes]] = [
    ("host-missing-http-1.0", head(f"Content-Length: {len(BODY)}", version="1.0") + BODY),
    ("te-chunked-any-case", head("Host: a", "Transfer-Encoding: ChUnKeD ") + CHUNKED),
    ("chunk-extension", head("Host: a", "Transfer-Encoding: chunked")
        + b"%x;name=value\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)),
    ("trailer-dropped", head("Host: a", "Transfer-Encoding: chunked")
        + chunk(BODY) + b"0\r\nX-Trailer: 1\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"),
    ("cl-trailing-space", head("Host: a", f"Content-Length: {len(BODY)} ") + BODY),
    ("host-with-port", head("Host: a.example:8061", f"Content-Length: {len(BODY)}") + BODY),
    ("host-ipv6", head("Host: [::1]:8061", f"Content-Length: {len(BODY)}") + BODY),
    ("value-obs-text", head("Host: a", "X-Latin: caf\xe9", f"Content-Length: {len(BODY)}")
        + BODY),
]  # fmt: skip


# ----------------------------------------------------------------- helpers
@dataclass
class Seen:
    """A request as the backend received it, headers as sent on the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Backend = Callable[..., Awaitable[tuple[Balancer, list[Seen]]]]


@pytest.fixture
async def backend(harness: Harness) -> AsyncIterator[Backend]:
    """A balancer with one simulated server behind it that records every request
    the balancer sends it (those carry ``X-Request-Id``; the agent's polls do not)
    and adds ``response_headers`` to every response."""
    runners: list[web.AppRunner] = []

    async def start(
        response_headers: tuple[tuple[str, str], ...] = (), **balancer: Any
    ) -> tuple[Balancer, list[Seen]]:
        seen: list[Seen] = []
        app = make_app(SimConfig(name="rec", tokens_per_second=1e6))

        async def record(request: web.Request, response: web.StreamResponse) -> None:
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
            if any(k.lower() == "x-request-id" for k, _ in headers):
                body = await request.read()
                seen.append(Seen(request.method, request.raw_path, headers, body))
            for name, value in response_headers:
                response.headers.add(name, value)

        app.on_response_prepare.append(record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        balancer_ = await harness.balancer(**balancer)
        await harness.agent(runner.addresses[0][1], balancer_, name="rec")
        return balancer_, seen

    yield start
    for runner in runners:
        await runner.cleanup()


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def connect(balancer: Balancer) -> AsyncIterator[Streams]:
    reader, writer = await asyncio.open_connection("127.0.0.1", balancer.inference_port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]], bytes]:
    """One response: status, header pairs as sent (names as written) and the body,
    de-chunked."""
    async with asyncio.timeout(TIMEOUT):
        raw = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines)]
        values = {n.lower(): v for n, v in headers}
        if values.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
        elif "content-length" in values:
            body = await reader.readexactly(int(values["content-length"]))
        else:
            body = await reader.read()
    return int(status_line.split(" ")[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(2):
            return await reader.read() == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def exchange(balancer: Balancer, data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    async with connect(balancer) as (reader, writer):
        writer.write(data)
        return await read_response(reader)


def names(headers: list[tuple[str, str]]) -> set[str]:
    return {n.lower() for n, _ in headers}


# ------------------------------------------------------------------ framing
@pytest.mark.parametrize(("case", "data", "status"), REJECTED, ids=[c[0] for c in REJECTED])
async def test_a_bad_request_is_rejected_closed_and_never_forwarded(
    backend: Backend, case: str, data: bytes, status: int
):
    balancer, seen = await backend()
    async with connect(balancer) as (reader, writer):
        writer.write(data)
        got, headers, body = await read_response(reader)
        assert got == status, (case, body)
        assert json.loads(body)["error"]["code"] == status
        assert ("Connection", "close") in headers
        assert await closed_by_server(reader), f"{case}: the connection stayed open"
    assert seen == [], f"{case}: the server received {seen}"
    assert await exchange(balancer, head("Host: a", "Content-Length: 17") + BODY)
    assert len(seen) == 1  # and the next client is served


@pytest.mark.parametrize(("case", "data"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
async def test_a_good_request_in_an_unusual_shape_is_served(
    backend: Backend, case: str, data: bytes
):
    balancer, seen = await backend()
    status, _, body = await exchange(balancer, data)
    assert status == 200, (case, body)
    assert json.loads(body)["tokens"]
    assert [s.body for s in seen] == [BODY]
    assert not {"x-trailer", "transfer-encoding"} & names(seen[0].headers)
    assert seen[0].get("X-Forwarded-For") == ["127.0.0.1"]  # never from a trailer


@pytest.mark.parametrize(
    "target",
    [
        "/v1/chat%2Fcompletions",  # decoded, this is the chat route
        "/v1%2Fchat%2Fcompletions",
        "/tokeniz%65",
        "/%74okenize",
        "/tokenize%00",
        "/tokenize%3F",
        "/metric%73",  # a blocked route must not come back in disguise
        "/slots%2F0",
        "/v1/chat/completions/..%2F..%2Fmetrics",
        "//tokenize",
        "/./tokenize",
    ],
)
async def test_a_percent_encoded_path_is_routed_as_it_is_forwarded(backend: Backend, target: str):
    """The route is chosen from the path exactly as it would be forwarded: a path
    that is a route only once decoded is no route at all (404), never sent on."""
    balancer, seen = await backend()
    status, _, body = await exchange(
        balancer, head("Host: a", f"Content-Length: {len(BODY)}", target=target) + BODY
    )
    assert status == 404, body
    assert seen == []


async def test_the_query_is_forwarded_as_sent_and_does_not_change_the_route(backend: Backend):
    balancer, seen = await backend()
    target = "/tokenize?next=%2Fmetrics&x=%2F..%2F"
    status, _, _ = await exchange(
        balancer, head("Host: a", f"Content-Length: {len(BODY)}", target=target) + BODY
    )
    assert status == 200
    assert [(s.method, s.target) for s in seen] == [("POST", target)]


# ------------------------------------------------------------- hop-by-hop
HOP_BY_HOP_SENT = [
    "Connection: keep-alive, X-Hop, X-Forwarded-Host",
    "X-Hop: not for the server",
    "X-Forwarded-Host: named in Connection",
    "Proxy-Connection: keep-alive",
    "Keep-Alive: timeout=5",
    "TE: trailers",
    "Trailer: X-Checksum",
    "Upgrade: something",
    "Proxy-Authorization: Basic c2VjcmV0",
    "X-End-To-End: kept",
]


async def test_hop_by_hop_request_headers_are_not_forwarded(backend: Backend):
    balancer, seen = await backend()
    data = head("Host: a", *HOP_BY_HOP_SENT, f"Content-Length: {len(BODY)}") + BODY
    status, _, body = await exchange(balancer, data)
    assert status == 200, body
    (upstream,) = seen
    hop = {
        "connection",
        "x-hop",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    }
    assert not hop & names(upstream.headers), upstream.headers
    assert upstream.get("X-End-To-End") == ["kept"]
    assert upstream.get("X-Forwarded-Host") == ["a"]  # the balancer's own, from Host
    assert upstream.get("Host") != ["a"]  # the server's address, set by the pool


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_hop_by_hop_response_headers_are_not_relayed(backend: Backend, stream: bool):
    balancer, seen = await backend(
        response_headers=(
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "not for the client"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Trailer", "X-Checksum"),
            ("X-Upstream-Says", "hello"),
        )
    )
    body = json.dumps({"prompt": "hi", "n_predict": 2, "stream": stream}).encode()
    data = head("Host: a", f"Content-Length: {len(body)}", target="/completion") + body
    async with connect(balancer) as (reader, writer):
        writer.write(data)
        status, headers, answer = await read_response(reader)
        assert status == 200, answer
        assert ("X-Upstream-Says", "hello") in headers
        assert not {"x-hop", "keep-alive", "proxy-connection", "trailer"} & names(headers)
        assert "connection" not in names(headers)  # the client's connection stays open
        writer.write(head("Host: a", f"Content-Length: {len(BODY)}") + BODY)
        status, _, _ = await read_response(reader)
        assert status == 200
    assert len(seen) == 2


# ---------------------------------------------------------------- forwarded
SPOOFED = [
    "X-Forwarded-For: 203.0.113.7",
    "X-Forwarded-For: 198.51.100.1",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: public.example",
    "Forwarded: for=203.0.113.7;proto=https",
    "X-Real-IP: 203.0.113.7",
]


async def test_forwarded_headers_from_an_untrusted_peer_are_replaced(backend: Backend):
    balancer, seen = await backend(forwarded_allow_ips=())
    data = head("Host: corral.test:8061", *SPOOFED, f"Content-Length: {len(BODY)}") + BODY
    status, _, _ = await exchange(balancer, data)
    assert status == 200
    (upstream,) = seen
    assert upstream.get("X-Forwarded-For") == ["127.0.0.1"]
    assert upstream.get("X-Forwarded-Proto") == ["http"]
    assert upstream.get("X-Forwarded-Host") == ["corral.test:8061"]
    assert upstream.get("Forwarded") == ['for=127.0.0.1;host="corral.test:8061";proto=http']
    assert upstream.get("X-Real-IP") == []


async def test_forwarded_headers_from_a_trusted_proxy_are_appended_to(backend: Backend):
    balancer, seen = await backend()  # trusts 127.0.0.1 by default, as uvicorn does
    data = head("Host: corral.test", *SPOOFED, f"Content-Length: {len(BODY)}") + BODY
    status, _, _ = await exchange(balancer, data)
    assert status == 200
    (upstream,) = seen
    assert upstream.get("X-Forwarded-For") == ["203.0.113.7, 198.51.100.1, 127.0.0.1"]
    assert upstream.get("X-Forwarded-Proto") == ["https"]
    assert upstream.get("X-Forwarded-Host") == ["public.example"]
    assert upstream.get("Forwarded") == [
        "for=203.0.113.7;proto=https, for=127.0.0.1;host=corral.test;proto=http"
    ]
    assert upstream.get("X-Real-IP") == ["203.0.113.7"]


async def test_forwarded_headers_are_set_on_a_plain_request(backend: Backend):
    balancer, seen = await backend()
    status, _, _ = await exchange(balancer, head(f"Content-Length: {len(BODY)}",
                                                 version="1.0") + BODY)  # fmt: skip
    assert status == 200
    (upstream,) = seen
    assert upstream.get("X-Forwarded-For") == ["127.0.0.1"]
    assert upstream.get("X-Forwarded-Host") == []  # no Host to tell
    assert upstream.get("Forwarded") == ["for=127.0.0.1;proto=http"]

"""Fuzz the balancer's three network surfaces with property-based inputs (hypothesis).

    PYTHONPATH=src .venv/bin/python benchmarks/fuzz.py [--examples N] [--surface NAME]
        [--examples-for SURFACE=N] [--workers N] [--batch N] [--seed N]

A long run (100,000 inference cases) on a 2-core machine:

    benchmarks/fuzz.py --workers 2 --examples-for http=60000 --examples-for body=40000 \
        --examples-for agent=10000 --examples-for management=20000

One balancer runs in a background thread's event loop, with one agent and a
simulated llama-server behind it that records every request the balancer sends it.
Each case is checked, then the balancer must still serve a plain request.

- **http** (the inference listener, :mod:`corral.balancer.http_server`): one
  connection per case carries a sequence of segments: well-formed requests (each
  with a nonce in its body), smuggling shapes that hide a whole request in or after
  them (Content-Length with Transfer-Encoding, two Content-Lengths, bad chunk sizes,
  obsolete line folding, bare CR and LF, NUL, bad versions and codings, a body that
  never ends), huge or many headers, mutated and random bytes; the bytes are cut
  at random points and written with small delays (slow writes, pipelining). The
  requests before the first bad segment are each served once, in order, with 200;
  after a bad segment at most one answer comes, a 4xx or 5xx, and nothing after it
  reaches the server; the server never sees a body the client did not send, nor one
  nonce twice; the connection is closed by the balancer or stays usable.
- **body** (the inference listener's own reading of generation requests): up to
  three well-formed requests on one connection to ``/v1/chat/completions``,
  ``/v1/completions`` and ``/completion``, on a balancer with ``--routing prefix``
  (so the prompt is read: :mod:`corral.balancer.prompt`), the priority queue and a
  TOML keys file. Their bodies are JSON with fuzzed ``model``, ``id_slot``, ``lora``,
  ``prompt``, ``messages``, ``stream``... (any JSON type, strings that are not
  UTF-8), mutated or random bytes, maybe gzip-encoded (or claiming a coding they do
  not have); their headers a key that is right, wrong or badly presented, and an
  ``X-Corral-Priority``. Every request gets one answer, in order, 2xx or 4xx: a 5xx
  fails the case, counted apart as relayed from the server (``X-Corral-Server``) or
  the balancer's own. A request the balancer refused never reaches the server; one
  relayed reached it once, with its path and body as sent (``id_slot`` and ``lora``
  rewritten at most), and neither the client's key nor ``X-Corral-Priority``.
- **agent** (the agent protocol through the management WebSocket): frames valid,
  mutated, random, out of order (status before register, register twice), of the
  wrong type, oversized. No frame makes the balancer raise; the socket's agent is
  gone from the fleet when it closes; the fleet's counters stay in range.
- **management** (the management API): random methods, paths, tokens and bodies.
  Nothing answers 5xx; without the token nothing but the public routes answers 2xx
  and the desired state does not change.

Cases run sequentially on each target, so every answer and every request the
server saw belongs to one case. A long run splits each surface's cases into batches
(``--batch``, one hypothesis run each, with its own seed) spread over ``--workers``
processes, each with its own balancer, simulated server and agent: the properties
are the same, checked per case. At the end of each batch no reservation is left
held. The count of cases run per surface is printed (the figure for
docs/benchmarks.md, "Fuzzing"). A failure prints the smallest input hypothesis
found and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import itertools
import logging
import multiprocessing
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from corral.addr import Addr
from corral.agent import Agent, AgentConfig
from corral.balancer import Balancer, BalancerConfig
from corral.config.keys import parse_keys
from corral.sim import SimConfig, make_app

T = TypeVar("T")
ANY = Addr("127.0.0.1", 0)
TOKEN = "fuzz-management-token"
IDLE = 0.3
"""Seconds the fuzzed listener waits on an idle or half-sent request (75 s normally)."""
READ_LIMIT = 10.0
"""Seconds a case's connection may stay open after its last byte: longer is a hang."""
_NONCE = re.compile(rb"n(\d+)x\1y")
"""A request's nonce, written twice: a mutation that changes one byte of it (a digit
flipped) cannot make it another request's nonce (the long run's false "served twice":
``n87518x`` mutated into ``n87519x``, the next request's)."""
ADAPTERS = ("/m/style.gguf", "/m/tone.gguf")
"""LoRA adapters the body surface's server has loaded: a request naming one as its
``model`` has its ``lora`` field rewritten (:mod:`corral.balancer.lora`)."""
KEYS = ("sk-fuzz-chat", "sk-fuzz-bulk")
KEYS_FILE = f"""
[[tenant]]
name = "chat"
key = "{KEYS[0]}"
max_class = "high"

[[tenant]]
name = "bulk"
key = "{KEYS[1]}"
class = "batch"
max_concurrent = 1
"""
KEEP_SERVER_ERRORS = 5
"""5xx answers kept per status for the report (the statuses count them all)."""


# ------------------------------------------------------------------ the target
@dataclass
class Seen:
    method: str
    path: str
    body: bytes
    request_id: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Target:
    """A balancer, a recording simulated server and its agent, on a loop in a thread.

    The server records each request the balancer sends it (they carry
    ``X-Request-Id``): method, path, body, request id and headers."""

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    seen: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[tuple[bytes, int, bytes]] = field(default_factory=list)
    """(what was sent, the status, the answer's body) of 5xx answers, to look at."""
    body_5xx: Counter[str] = field(default_factory=Counter)
    """5xx answers of the body surface: ``relayed`` (from the server) or ``balancer``."""
    balancer: Balancer | None = None
    keyed: bool = False
    """Prefix routing, the priority queue and a TOML keys file (the **body** surface);
    else none of them (the others)."""
    _stops: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def b(self) -> Balancer:
        assert self.balancer is not None
        return self.balancer

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        lora = ADAPTERS if self.keyed else ()
        app = make_app(SimConfig(name="rec", tokens_per_second=1e6, lora=lora))

        async def record(request: web.Request, response: web.StreamResponse) -> None:
            if "X-Request-Id" in request.headers:
                body = await request.read()
                rid = request.headers["X-Request-Id"]
                headers = tuple(request.headers.items())
                self.seen.append(Seen(request.method, request.raw_path, body, rid, headers))

        app.on_response_prepare.append(record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._stops.append(runner.cleanup)
        extra: dict[str, Any] = {}
        if self.keyed:
            extra = {"routing": "prefix", "queue": "priority",
                     "tenant_keys": tuple(parse_keys(KEYS_FILE, toml=True))}  # fmt: skip
        balancer = Balancer(
            BalancerConfig(inference_addr=ANY, management_addr=ANY, management_token=TOKEN, **extra)
        )
        await balancer.start()
        self._stops.append(balancer.stop)
        assert balancer._inference is not None
        balancer._inference.keepalive_timeout = IDLE
        self.balancer = balancer
        agent = Agent(
            AgentConfig(
                local_llamacpp_addr=Addr("127.0.0.1", runner.addresses[0][1]),
                management_addrs=(Addr("127.0.0.1", balancer.management_port),),
                name="rec",
                poll_interval=0.05,
            )
        )
        await agent.start()
        self._stops.append(agent.stop)
        await self.until(
            lambda: any(a.routable and len(a.adapters) == len(lora) for a in balancer.fleet),
            "the agent ready",
        )

    async def stop(self) -> None:
        for stop in reversed(self._stops):
            with contextlib.suppress(Exception):
                await stop()
        await self.http.close()

    def close(self) -> None:
        self.call(self.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    async def until(self, check: Any, what: str, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.b!r}")
            await asyncio.sleep(0.01)

    async def still_serves(self) -> None:
        """A plain request on a new connection gets 200, and the fleet is as it was."""
        await self.until(lambda: len(self.b.fleet) == 1, "the fleet back to its one agent")
        url = f"http://127.0.0.1:{self.b.inference_port}/tokenize"
        key = {"Authorization": f"Bearer {KEYS[0]}"} if self.keyed else {}
        async with self.http.post(url, json={"content": "alive"}, headers=key) as r:
            assert r.status == 200, f"the balancer stopped serving: {r.status}"
        assert not self.errors, f"the balancer logged an unhandled error: {self.errors[0]}"

    async def no_reservation_held(self) -> None:
        await self.until(
            lambda: all(a.reserved == 0 for a in self.b.fleet), "every reservation released"
        )


class _Errors(logging.Handler):
    """Collects records with a traceback: a fuzz input must never cause one."""

    def __init__(self, target: Target) -> None:
        super().__init__(logging.ERROR)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.target.errors.append(self.format(record))


# ------------------------------------------------------------ http: the inputs
@dataclass(frozen=True)
class Segment:
    data: bytes
    kind: str  # "good" (served if nothing bad came before), "bad" (refused), "maybe"
    nonces: tuple[int, ...] = ()  # in bodies the client sent as requests
    hidden: tuple[int, ...] = ()  # in requests smuggled inside a bad segment
    body: bytes | None = None  # a chunked request's body, de-chunked


class Nonces:
    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next


def _body(nonce: int) -> bytes:
    return b'{"content": "n%dx%dy"}' % (nonce, nonce)


def _request(nonce: int, *extra: bytes, close: bool = False) -> bytes:
    body = _body(nonce)
    lines = [b"POST /tokenize HTTP/1.1", b"Host: a", b"Content-Length: %d" % len(body), *extra]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join([*lines, b"", b""]) + body


def _chunked(nonce: int) -> bytes:
    body = _body(nonce)
    half = len(body) // 2
    head = b"POST /tokenize HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (
        half,
        body[:half],
        len(body) - half,
        body[half:],
    )
    return head + chunks


def _head(*lines: bytes, version: bytes = b"1.1") -> bytes:
    return b"\r\n".join([b"POST /tokenize HTTP/" + version, *lines, b"", b""])


def _smuggling(hidden: int) -> dict[str, bytes]:
    """Requests a proxy must refuse, each hiding request ``hidden`` in or after it."""
    body = _body(hidden)
    inner = _request(hidden)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    n = len(body)
    return {
        "cl-te": _head(b"Host: a", b"Content-Length: 4", b"Transfer-Encoding: chunked")
        + chunked
        + inner,
        "te-cl": _head(b"Host: a", b"Transfer-Encoding: chunked", b"Content-Length: 4")
        + chunked
        + inner,
        "two-cl": _head(
            b"Host: a", b"Content-Length: %d" % n, b"Content-Length: %d" % (n + len(inner))
        )
        + body
        + inner,
        "cl-list": _head(b"Host: a", b"Content-Length: %d, %d" % (n, n)) + body + inner,
        "cl-plus": _head(b"Host: a", b"Content-Length: +%d" % n) + body + inner,
        "bad-chunk-size": _head(b"Host: a", b"Transfer-Encoding: chunked") + b"zz\r\n" + inner,
        "chunk-overflow": _head(b"Host: a", b"Transfer-Encoding: chunked")
        + b"f" * 20
        + b"\r\n"
        + inner,
        "chunk-no-crlf": _head(b"Host: a", b"Transfer-Encoding: chunked")
        + b"%x\r\n%sXX0\r\n\r\n" % (n, body)
        + inner,
        "obs-fold": _head(
            b"Host: a", b"X-A: 1", b" Transfer-Encoding: chunked", b"Content-Length: %d" % n
        )
        + body
        + inner,
        "bare-lf": b"POST /tokenize HTTP/1.1\nHost: a\nContent-Length: %d\n\n" % n + body + inner,
        "bare-cr": b"POST /tokenize HTTP/1.1\rHost: a\r\nContent-Length: %d\r\n\r\n" % n
        + body
        + inner,
        "space-before-colon": _head(b"Host: a", b"Content-Length : %d" % n) + body + inner,
        "nul-in-header": _head(b"Host: a", b"X-A: a\x00b", b"Content-Length: %d" % n)
        + body
        + inner,
        "te-in-http10": _head(b"Host: a", b"Transfer-Encoding: chunked", version=b"1.0")
        + chunked
        + inner,
        "te-gzip": _head(b"Host: a", b"Transfer-Encoding: gzip, chunked") + chunked + inner,
        "te-identity": _head(b"Host: a", b"Transfer-Encoding: identity", b"Content-Length: %d" % n)
        + body
        + inner,
        "http2-version": _head(b"Host: a", b"Content-Length: %d" % n, version=b"2.0")
        + body
        + inner,
        "two-hosts": _head(b"Host: a", b"Host: b", b"Content-Length: %d" % n) + body + inner,
        "no-host": _head(b"Content-Length: %d" % n) + body + inner,
        "huge-header": _head(b"Host: a", b"X-Big: " + b"a" * 70_000, b"Content-Length: %d" % n)
        + body
        + inner,
        "many-headers": _head(
            b"Host: a", *(b"X-%d: 1" % i for i in range(150)), b"Content-Length: %d" % n
        )
        + body
        + inner,
        "fragment": b"POST /tokenize#x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % n
        + body
        + inner,
        "body-never-ends": _head(b"Host: a", b"Content-Length: 100000") + inner,
        "head-never-ends": b"POST /tokenize HTTP/1.1\r\nHost: a\r\nX-A: " + inner,
    }


SMUGGLING_SHAPES = tuple(_smuggling(0))


@st.composite
def segments(draw: st.DrawFn, nonces: Nonces) -> list[Segment]:
    """A connection's worth of segments, ending with a request that closes it."""
    out: list[Segment] = []
    for _ in range(draw(st.integers(0, 5))):
        choice = draw(
            st.sampled_from(["good", "good", "chunked", "health", "bad", "mutated", "random"])
        )
        if choice == "good":
            n = nonces()
            extra = draw(
                st.sampled_from(
                    [(), (b"X-A: b",), (b"Expect: 100-continue",), (b"Connection: keep-alive",)]
                )
            )
            out.append(Segment(_request(n, *extra), "good", (n,)))
        elif choice == "chunked":
            n = nonces()
            out.append(Segment(_chunked(n), "good", (n,), body=_body(n)))
        elif choice == "health":
            out.append(Segment(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", "good"))
        elif choice == "bad":
            h = nonces()
            shape = draw(st.sampled_from(SMUGGLING_SHAPES))
            out.append(Segment(_smuggling(h)[shape], "bad", hidden=(h,)))
        elif choice == "mutated":
            n = nonces()
            data = bytearray(_request(n))
            for _ in range(draw(st.integers(1, 3))):
                at = draw(st.integers(0, 10_000)) % len(data)  # not by length: nonces vary
                op = draw(st.sampled_from(["flip", "insert", "delete"]))
                byte = draw(st.sampled_from(b"\r\n :;\x00\t,0-9aZ\x7f\xff"))
                if op == "flip":
                    data[at] = byte
                elif op == "insert":
                    data.insert(at, byte)
                elif len(data) > 1:
                    del data[at]
            out.append(Segment(bytes(data), "maybe", (n,)))
        else:
            out.append(Segment(draw(st.binary(min_size=1, max_size=64)), "maybe"))
    n = nonces()
    out.append(Segment(_request(n, close=True), "good", (n,)))
    return out


# ------------------------------------------------------------ http: the checks
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes) -> list[Response]:
    """The responses in a connection's bytes, in order.

    Raises:
        AssertionError: the bytes are not a sequence of well-formed responses.
    """
    out: list[Response] = []
    while data:
        end = data.find(b"\r\n\r\n")
        assert end >= 0, f"a response head never ended: {data[:200]!r}"
        status_line, *lines = data[:end].decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ")
        assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
        headers = {}
        for line in lines:
            name, colon, value = line.partition(":")
            assert colon and name.strip() == name, f"bad header line {line!r}"
            headers[name.lower()] = value.strip()
        data = data[end + 4 :]
        code = int(status)
        if code == 100:
            continue
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size_end = data.index(b"\r\n")
                size = int(data[:size_end].split(b";")[0], 16)
                data = data[size_end + 2 :]
                if size == 0:
                    assert data.startswith(b"\r\n"), "trailers are not expected"
                    data = data[2:]
                    break
                body += data[:size]
                assert data[size : size + 2] == b"\r\n", "a chunk did not end with CRLF"
                data = data[size + 2 :]
        else:
            length = int(headers.get("content-length", "0"))
            assert len(data) >= length, "a response body was cut short"
            body, data = data[:length], data[length:]
        out.append(Response(code, headers, body))
    return out


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    pieces: list[bytes],
    delays: list[float],
) -> bytes:
    """Write ``pieces`` (waiting ``delays[i]`` after piece ``i``, cyclically), then read
    until the balancer closes the connection, within ``READ_LIMIT`` seconds of the last
    byte (else AssertionError); the connection is closed either way."""
    received = bytearray()
    try:
        for i, piece in enumerate(pieces):
            writer.write(piece)
            if delays and delays[i % len(delays)]:
                await asyncio.sleep(delays[i % len(delays)])
            if writer.is_closing():
                break
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(READ_LIMIT):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    received += chunk
    except TimeoutError:
        raise AssertionError(
            f"the connection stayed open {READ_LIMIT}s after the last byte"
        ) from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return bytes(received)


async def http_case(
    target: Target, parts: list[Segment], cuts: list[int], delays: list[float]
) -> None:
    sent = b"".join(p.data for p in parts)
    target.seen.clear()  # what earlier cases sent is checked; a long run keeps no history
    before = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", target.b.inference_port)
    points = sorted({c % (len(sent) + 1) for c in cuts} | {0, len(sent)})
    pieces = [sent[a:b] for a, b in itertools.pairwise(points)]
    responses = parse_responses(await _exchange(reader, writer, pieces, delays))
    target.statuses.update(r.status for r in responses)
    for r in responses:
        kept = sum(1 for _, status, _ in target.server_errors if status == r.status)
        if r.status >= 500 and kept < KEEP_SERVER_ERRORS:
            target.server_errors.append((sent, r.status, r.body))
    upstream = target.seen[before:]
    check_http(parts, sent, responses, upstream)


def check_http(
    parts: list[Segment], sent: bytes, responses: list[Response], upstream: list[Seen]
) -> None:
    served = Counter(int(n) for s in upstream for n in _NONCE.findall(s.body))
    chunked = {p.body for p in parts if p.body is not None}
    for seen in upstream:
        assert seen.body in sent or seen.body in chunked, (
            f"the server got a body the client never sent: {seen.body!r}"
        )
    twice = [n for n, count in served.items() if count > 1]
    assert not twice, f"requests served twice: {twice}"
    state = "sure"
    sure = 0
    for part in parts:
        if state == "sure" and part.kind == "good":
            sure += 1
            for n in part.nonces:
                assert served[n] == 1, f"request {n} was not served once: {served[n]}"
            continue
        if state == "sure":
            state = "dead" if part.kind == "bad" else "maybe"
        if state == "dead":
            for n in (*part.nonces, *part.hidden):
                assert served[n] == 0, (
                    f"request {n} came after a refused one and reached the server"
                )
    assert len(responses) >= sure, f"{sure} requests should have answers, got {len(responses)}"
    for i, response in enumerate(responses[:sure]):
        assert response.status == 200, f"answer {i} is {response.status}: {response.body[:200]!r}"
    if state == "dead":
        extra = responses[sure:]
        assert len(extra) <= 1, f"answers after a refused request: {[r.status for r in extra]}"
        assert all(r.status >= 400 for r in extra), [r.status for r in extra]
    for response in responses:
        assert 200 <= response.status <= 599, response.status
        assert response.status != 500, f"an internal error: {response.body[:300]!r}"


# ------------------------------------------------------------ body: the inputs
GENERATION_PATHS = ["/v1/chat/completions", "/v1/completions", "/completion"]
BAD_UTF8 = "\u0001BAD\u0001"
"""Replaced by bytes that are not UTF-8 in the encoded body (JSON cannot say them)."""

_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False) | st.text(max_size=12) | st.just(BAD_UTF8)
)  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_messages = st.lists(
    st.dictionaries(
        st.sampled_from(["role", "content", "tool_calls", "name"]),
        st.sampled_from(["user", "system", "assistant", "tool", ""]) | _values,
        max_size=4,
    )
    | _values,
    max_size=4,
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["rec", "style", "tone", "fuzz", "", "rec:lora", BAD_UTF8]) | _scalars,
    "id_slot": st.integers(-3, 4) | st.sampled_from([2**63, 2**64, -(2**63) - 1, 1.5]) | _values,
    "lora": st.lists(st.fixed_dictionaries({"id": _scalars, "scale": _scalars}), max_size=2)
    | _values,
    "prompt": st.text(max_size=40) | st.lists(st.integers(-5, 2**40), max_size=5) | _values,
    "messages": _messages,
    "system": _values,
    "tools": _values,
    "input": _values,
    "stream": st.booleans() | _values,
    "stream_options": st.fixed_dictionaries({"include_usage": _scalars}) | _values,
    "n_predict": st.sampled_from([1, 2, 4, 0]) | st.text(max_size=3) | st.floats(0, 4),
}
PRIORITIES = ["high", "interactive", "batch", "HIGH", " batch ", "", "urgent", "b\u00e9tch"]


@dataclass(frozen=True)
class BodyRequest:
    """One well-formed HTTP request to a generation route, its body and headers fuzzed."""

    data: bytes
    path: str
    request_id: str
    body: bytes
    """The body as sent upstream, should it go there (decoded if it was compressed)."""
    key: str | None
    """The client's key (it must never reach the server)."""


@st.composite
def body_requests(draw: st.DrawFn, nonces: Nonces) -> list[BodyRequest]:
    """Up to three requests on one connection, the last closing it."""
    import gzip
    import json

    out: list[BodyRequest] = []
    count = draw(st.integers(1, 3))
    for i in range(count):
        path = draw(st.sampled_from(GENERATION_PATHS))
        n = nonces()
        fields: dict[str, Any] = {"n_predict": 2}  # the simulator's default of 16 is slower
        if path == "/v1/chat/completions":
            fields["messages"] = [{"role": "user", "content": f"n{n}x " * draw(st.integers(1, 3))}]
        else:
            fields["prompt"] = f"n{n}x " * draw(st.integers(1, 3))
        if draw(st.booleans()):
            fields["model"] = draw(st.sampled_from(["rec", "rec", "style"]))
        names = draw(st.lists(st.sampled_from(list(FIELDS)), max_size=4, unique=True))
        fields.update({name: draw(FIELDS[name]) for name in names})
        kind = draw(st.sampled_from(["json"] * 5 + ["mutated", "mutated", "bytes", "empty"]))
        body = json.dumps(fields).encode().replace(b"\\u0001BAD\\u0001", b"\xff\xfe")
        if kind == "mutated":
            mutable = bytearray(body)
            for _ in range(draw(st.integers(1, 3))):
                at = draw(st.integers(0, 10_000)) % (len(mutable) or 1)
                byte = draw(st.sampled_from(b'"{}[],:\\\x00\xc3\xff0a '))
                op = draw(st.sampled_from(["flip", "insert", "delete"]))
                if op == "insert" or not mutable:
                    mutable.insert(at, byte)
                elif op == "flip":
                    mutable[at] = byte
                else:
                    del mutable[at]
            body = bytes(mutable)
        elif kind == "bytes":
            body = draw(st.binary(max_size=64))
        elif kind == "empty":
            body = b""
        rid = f"fz{n}"
        lines = [f"POST {path} HTTP/1.1".encode(), b"Host: a", b"X-Request-Id: " + rid.encode()]
        key = draw(st.sampled_from([*KEYS * 6, None, "sk-wrong", KEYS[0] + "x", "\u00e9"]))
        if key is not None:
            how = draw(
                st.sampled_from(["Bearer "] * 4 + ["bearer ", "Bearer  ", "x-api-key", "Basic "])
            )
            value = key.encode("latin-1")
            lines.append(
                b"X-Api-Key: " + value
                if how == "x-api-key"
                else b"Authorization: " + how.encode() + value
            )
        priority = draw(st.none() | st.sampled_from(PRIORITIES))
        if priority is not None:
            lines.append(b"X-Corral-Priority: " + priority.encode("latin-1"))
        if draw(st.booleans()):
            lines.append(b"Content-Type: application/json")
        sent = body
        coding = draw(st.sampled_from([None, None, None, "gzip", "gzip-bad", "br"]))
        if coding == "gzip":
            sent = gzip.compress(body)
            lines.append(b"Content-Encoding: gzip")
        elif coding is not None:
            lines.append(b"Content-Encoding: " + coding.removesuffix("-bad").encode())
        lines.append(b"Content-Length: %d" % len(sent))
        if i == count - 1:
            lines.append(b"Connection: close")
        data = b"\r\n".join([*lines, b"", b""]) + sent
        out.append(BodyRequest(data, path, rid, body, key))
    return out


# ------------------------------------------------------------ body: the checks
async def body_case(target: Target, requests: list[BodyRequest]) -> None:
    target.seen.clear()
    sent = b"".join(r.data for r in requests)
    reader, writer = await asyncio.open_connection("127.0.0.1", target.b.inference_port)
    responses = parse_responses(await _exchange(reader, writer, [sent], []))
    for r in responses:
        relayed = "x-corral-server" in r.headers
        target.statuses[r.status] += 1
        if r.status >= 500:
            target.body_5xx["relayed" if relayed else "balancer"] += 1
            kept = sum(1 for _, status, _ in target.server_errors if status == r.status)
            if kept < KEEP_SERVER_ERRORS:
                target.server_errors.append((sent, r.status, r.body))
    check_body(requests, responses, target.seen)


def _same_request(sent: bytes, seen: bytes) -> bool:
    """The server got the body sent, or it with ``id_slot`` (a fleet slot id made the
    server's) or ``lora`` (an adapter's ids) rewritten by the balancer."""
    if sent == seen:
        return True
    import msgspec

    try:
        a, b = msgspec.json.decode(sent), msgspec.json.decode(seen)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return False
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    return {k: v for k, v in a.items() if k not in ("id_slot", "lora")} == {
        k: v for k, v in b.items() if k not in ("id_slot", "lora")
    }


def check_body(
    requests: list[BodyRequest], responses: list[Response], upstream: list[Seen]
) -> None:
    """Every request answered once, in order, 2xx or 4xx; what the balancer refused
    never reached the server; what it relayed reached it once, as sent; the server
    never sees a client's key nor the priority header."""
    assert len(responses) == len(requests), (
        f"{len(requests)} requests got {len(responses)} answers: {[r.status for r in responses]}"
    )
    seen = Counter(s.request_id for s in upstream)
    ours = {r.request_id for r in requests}
    assert set(seen) <= ours, f"the server got requests the client never sent: {set(seen) - ours}"
    for request, response in zip(requests, responses, strict=True):
        relayed = "x-corral-server" in response.headers
        origin = "relayed from the server" if relayed else "from the balancer"
        assert response.status < 500, (
            f"{request.request_id}: {response.status} {origin}: {response.body[:300]!r}"
        )
        assert response.status < 300 or response.status >= 400, response.status
        if response.status < 300:
            assert relayed, f"{request.request_id}: a 2xx the server did not send"
        assert seen[request.request_id] == (1 if relayed else 0), (
            f"{request.request_id} answered {response.status} {origin} reached the server "
            f"{seen[request.request_id]} times"
        )
    for s in upstream:
        request = next(r for r in requests if r.request_id == s.request_id)
        assert s.path == request.path, f"sent to {request.path}, the server got {s.path}"
        assert _same_request(request.body, s.body), (
            f"the server got {s.body[:200]!r} for {request.body[:200]!r}"
        )
        names = {name.lower() for name, _ in s.headers}
        assert not names & {"authorization", "x-api-key", "x-corral-priority"}, (
            f"a client header reached the server: {s.headers}"
        )
        values = " ".join(v for _, v in s.headers)
        assert not any(k in values for k in KEYS), "a client's key reached the server"


# ------------------------------------------------------------ agent protocol
def _status(slots: int, busy: int, condition: str = "ready") -> dict[str, Any]:
    return {"condition": condition, "model": "fuzz", "slots_total": slots,
            "slots_processing": busy, "issues": []}  # fmt: skip


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


ADDRESSES = ["http://127.0.0.1:9", "", "x" * 3000, "ftp://a"]


@st.composite
def agent_frames(draw: st.DrawFn) -> list[bytes | str]:
    import json

    frames: list[bytes | str] = []
    for _ in range(draw(st.integers(1, 8))):
        slots = draw(st.integers(-2, 70000))
        busy = draw(st.integers(-2, 70000))
        condition = draw(st.sampled_from(["ready", "loading", "unreachable", "error", "bogus"]))
        valid: dict[str, Any] = draw(
            st.sampled_from(
                [
                    {"type": "register", "version": draw(st.integers(0, 2)),
                     "name": draw(st.text(max_size=300)),
                     "address": draw(st.sampled_from(ADDRESSES)),
                     "status": _status(slots, busy, condition)},
                    {"type": "status", "status": _status(slots, busy, condition),
                     "read_age": draw(st.floats(-1, 5000, allow_nan=False))},
                    {"type": "heartbeat"},
                    {"type": "deregister", "reason": draw(st.text(max_size=20))},
                    {"type": draw(st.text(max_size=12))},
                ]
            )
        )  # fmt: skip
        kind = draw(
            st.sampled_from(["valid", "valid", "mutated", "json", "bytes", "text", "oversized"])
        )
        if kind == "valid":
            frames.append(json.dumps(valid).encode())
        elif kind == "mutated":
            data = bytearray(json.dumps(valid).encode())
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
            frames.append(bytes(data))
        elif kind == "json":
            frames.append(json.dumps(draw(json_values)).encode())
        elif kind == "bytes":
            frames.append(draw(st.binary(max_size=200)))
        elif kind == "text":
            frames.append(draw(st.text(max_size=200)))
        else:
            frames.append(b'{"type": "heartbeat", "x": "' + b"a" * (1024 * 1024) + b'"}')
    return frames


async def agent_case(target: Target, frames: list[bytes | str]) -> None:
    url = f"http://127.0.0.1:{target.b.management_port}/api/v1/agent-socket"
    async with target.http.ws_connect(url) as ws:
        for frame in frames:
            if ws.closed:
                break
            with contextlib.suppress(ConnectionError):
                if isinstance(frame, str):
                    await ws.send_str(frame)
                else:
                    await ws.send_bytes(frame)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):
                async for _ in ws:
                    pass
        for backend in target.b.fleet:
            assert 0 <= backend.free <= backend.slots_total, repr(backend)
            assert backend.reserved >= 0 and backend.slots_total >= 0, repr(backend)


# ------------------------------------------------------------ management API
PATHS = ["/api/v1/agents", "/api/v1/buffered-requests", "/api/v1/desired-state", "/metrics",
         "/api/v1/info", "/health", "/", "/dashboard", "/api/v1/agent-socket",
         "/api/v1/agents/stream"]  # fmt: skip
PUBLIC = {"/health", "/", "/dashboard"}


@st.composite
def management_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    method = draw(st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]))
    path = draw(
        st.sampled_from(PATHS)
        | st.text("abcdefghijklmnopqrstuvwxyz/_-.%0123456789", max_size=40).map(lambda p: "/" + p)
    )
    token = draw(st.sampled_from([None, TOKEN, TOKEN + "x", "", "\u00e9", TOKEN[:-1]]))
    scheme = draw(st.sampled_from(["Bearer ", "bearer ", "Basic ", "Bearer  "]))
    headers = {} if token is None else {"Authorization": scheme + token}
    body = draw(
        st.sampled_from(
            [
                b"",
                b"{}",
                b'{"model": "m.gguf"}',
                b'{"model": 1}',
                b"[",
                b'{"slots": -1, "model": "x"}',
            ]
        )
        | st.binary(max_size=100)
    )
    return method, path, headers, body


async def management_case(
    target: Target, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    assert target.b.rollout is not None
    header = headers.get("Authorization", "")
    authorized = header[:7].lower() == "bearer " and header[7:].strip() == TOKEN
    if path == "/api/v1/agents/stream" and authorized and method == "GET":
        return  # an endless event stream
    before = target.b.rollout.status()
    url = f"http://127.0.0.1:{target.b.management_port}{path}"
    async with target.http.request(method, url, headers=headers, data=body) as r:
        await r.read()
        assert r.status < 500, f"{method} {path} answered {r.status}"
        public = r.url.path in PUBLIC  # as the client sent it: "/." is "/"
        if not authorized and not public and 200 <= r.status < 300:
            raise AssertionError(f"{method} {path} answered {r.status} without the token")
    if not authorized:
        assert target.b.rollout.status() == before, "the desired state changed without the token"


# ------------------------------------------------------------------- running
SURFACES = ("http", "body", "agent", "management")


def run(
    surface: str,
    examples: int,
    target: Target,
    seed: int | None = None,
    nonces: Nonces | None = None,
) -> int:
    """Run ``examples`` cases against ``surface`` in one hypothesis run; returns the number run.

    ``seed`` makes the run repeatable (each seed draws other cases); None draws at
    random. ``nonces`` numbers the requests of the inference cases; pass the same one
    to every run against one target.

    Raises:
        AssertionError (or what hypothesis re-raises): a case broke a property.
    """
    count = 0
    nonces = nonces or Nonces()
    options = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )

    def seeded(test: Any) -> Any:
        return test if seed is None else hypothesis_seed(seed)(test)

    if surface == "http":

        @seeded
        @options
        @given(
            segments(nonces),
            st.lists(st.integers(0, 100_000), max_size=6),
            st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.01]), max_size=4),
        )
        def case(parts: list[Segment], cuts: list[int], delays: list[float]) -> None:
            nonlocal count
            count += 1
            target.call(http_case(target, parts, cuts, delays))
            target.call(target.still_serves())

    elif surface == "body":

        @seeded
        @options
        @given(body_requests(nonces))
        def case(requests: list[BodyRequest]) -> None:
            nonlocal count
            count += 1
            target.call(body_case(target, requests))
            target.call(target.still_serves())

    elif surface == "agent":

        @seeded
        @options
        @given(agent_frames())
        def case(frames: list[bytes | str]) -> None:
            nonlocal count
            count += 1
            target.call(agent_case(target, frames))
            target.call(target.still_serves())

    else:

        @seeded
        @options
        @given(management_requests())
        def case(request: tuple[str, str, dict[str, str], bytes]) -> None:
            nonlocal count
            count += 1
            target.call(management_case(target, *request))
            assert not target.errors, target.errors[0]

    case()
    target.call(target.no_reservation_held())
    target.call(target.still_serves())
    return count


@contextlib.contextmanager
def running_target(keyed: bool = False) -> Any:
    """A started :class:`Target` (``keyed``: for the **body** surface), closed after."""
    target = Target(keyed=keyed)
    handler = _Errors(target)
    corral_log = logging.getLogger("corral")
    corral_log.addHandler(handler)
    aio_log = logging.getLogger("aiohttp")
    aio_log.addHandler(handler)
    try:
        target.call(target.start())
        yield target
    finally:
        corral_log.removeHandler(handler)
        aio_log.removeHandler(handler)
        target.close()


# ------------------------------------------------------- long runs, in parallel
@dataclass
class Batch:
    """What one hypothesis run of ``count`` cases found: sent back from a worker."""

    surface: str
    count: int
    statuses: Counter[int]
    server_errors: list[tuple[bytes, int, bytes]]
    failure: str | None = None
    body_5xx: Counter[str] = field(default_factory=Counter)


_worker_target: Target | None = None
_worker_keyed: Target | None = None
"""The worker's target for the body surface, started with its first batch."""
_worker_context = contextlib.ExitStack()
"""Holds the worker's targets open: a dropped context manager would close them."""
_worker_nonces = Nonces()


def _worker_start() -> None:
    """A worker process's plain target, kept for every batch it runs."""
    global _worker_target
    logging.basicConfig(level=logging.CRITICAL)
    _worker_target = _worker_context.enter_context(running_target())
    atexit.register(_worker_context.close)  # while the target's thread still runs


def run_batch(surface: str, examples: int, seed: int | None) -> Batch:
    """One hypothesis run of ``examples`` cases against this process's target.

    A failure is returned (hypothesis's smallest input in the text), not raised.
    """
    global _worker_keyed
    if surface == "body" and _worker_keyed is None:
        _worker_keyed = _worker_context.enter_context(running_target(keyed=True))
    target = _worker_keyed if surface == "body" else _worker_target
    assert target is not None, "run_batch runs in a worker started by _worker_start"
    target.statuses.clear()
    target.server_errors.clear()
    target.body_5xx.clear()
    failure = None
    count = 0
    try:
        count = run(surface, examples, target, seed, _worker_nonces)
    except Exception as exc:
        notes = "\n".join(getattr(exc, "__notes__", []))
        failure = f"{type(exc).__name__}: {exc}\n{notes}"
    return Batch(
        surface,
        count,
        Counter(target.statuses),
        list(target.server_errors),
        failure,
        Counter(target.body_5xx),
    )


def _batches(examples: int, size: int) -> list[int]:
    return [min(size, examples - at) for at in range(0, examples, size)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="cases per surface")
    parser.add_argument(
        "--surface", choices=(*SURFACES, "all"), action="append",
        help="a surface to fuzz (repeat for several; default all)",
    )  # fmt: skip
    parser.add_argument(
        "--examples-for", action="append", default=[], metavar="SURFACE=N",
        help="cases for one surface, overriding --examples (e.g. http=100000)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=1,
        help="processes, each with its own balancer, simulated server and agent (one per core)",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=int, default=1000,
        help="cases per hypothesis run; each run draws with its own seed",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="first seed (default random)")
    args = parser.parse_args(argv)
    chosen = [s for s in args.surface or () if s != "all"]
    surfaces = tuple(dict.fromkeys(chosen)) or SURFACES
    counts = dict.fromkeys(surfaces, args.examples)
    for item in args.examples_for:
        name, _, n = item.partition("=")
        if name not in counts or not n.isdigit():
            parser.error(f"--examples-for {item!r}: expected SURFACE=N with SURFACE one of "
                         f"{', '.join(surfaces)}")  # fmt: skip
        counts[name] = int(n)
    if args.workers < 1 or args.batch < 1:
        parser.error("--workers and --batch must be at least 1")
    seeds = itertools.count(args.seed) if args.seed is not None else itertools.repeat(None)
    logging.basicConfig(level=logging.CRITICAL)
    server_errors: list[tuple[bytes, int, bytes]] = []
    total = 0
    started_all = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, context, initializer=_worker_start) as pool:
        for surface in surfaces:
            started = time.monotonic()
            jobs = [
                pool.submit(run_batch, surface, n, next(seeds))
                for n in _batches(counts[surface], args.batch)
            ]
            count = 0
            statuses: Counter[int] = Counter()
            body_5xx: Counter[str] = Counter()
            for job in jobs:
                batch = job.result()
                count += batch.count
                if len(jobs) > 10 and count % (args.batch * 10) == 0:
                    print(f"  {surface}: {count} cases, {time.monotonic() - started:.0f}s",
                          file=sys.stderr, flush=True)  # fmt: skip
                statuses.update(batch.statuses)
                body_5xx.update(batch.body_5xx)
                server_errors.extend(batch.server_errors)
                if batch.failure is not None:
                    print(f"{surface}: FAILED after {count} cases: {batch.failure}", flush=True)
                    if body_5xx:
                        print(f"{surface}: 5xx answers: {dict(body_5xx)}", flush=True)
                    for other in jobs:
                        other.cancel()
                    return 1
            total += count
            elapsed = time.monotonic() - started
            print(
                f"{surface}: {count} cases in {elapsed:.0f}s ({count / elapsed:.0f}/s), all passed",
                flush=True,
            )
            if statuses:
                answers = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
                print(f"{surface}: answers by status: {answers}", flush=True)
            if surface == "body":
                print(f"{surface}: 5xx relayed from the server: {body_5xx['relayed']}, "
                      f"from the balancer: {body_5xx['balancer']}", flush=True)  # fmt: skip
    print(f"total: {total} cases in {time.monotonic() - started_all:.0f}s "
          f"with {args.workers} worker(s)")  # fmt: skip
    shown: Counter[int] = Counter()
    for sent, status, body in server_errors:
        shown[status] += 1
        if shown[status] <= KEEP_SERVER_ERRORS:
            print(f"{status} answer {body[:300]!r} to {sent[:2000]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Section 3: what Corral's data path costs, next to nginx and to no proxy at all.

A backend that answers at once (nginx returning one fixed streamed chat completion)
is reached three ways: directly, through nginx, and through Corral's balancer. wrk
measures the latency of one request at a time and the requests/s at many
connections. The proxies get a core of their own; wrk and the backend share
another, so the load generator and the proxy never compete for one core.

The backend is nginx, not Python, because on a two-core machine it shares its core
with wrk: it has to be much cheaper than any proxy in the test, or it, not the
proxy, would set the pace. Its answers are precomputed, so each whole stream leaves
in one write. This section therefore measures what a proxy costs per request; the
per-token cost of a stream whose tokens arrive apart in time is not measured by it
(the text says so next to the figures).

A second part measures that cost, token by token: :mod:`comparison.ticker`, a cheap
Python backend that paces every stream at a fixed rate (one event per token, each in
its own write), reached directly and through Corral by hundreds of concurrent
streams; it reports tokens/s delivered and Corral's CPU time per token.

    PYTHONPATH=benchmarks python -m comparison.overhead [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from comparison.common import (
    Processes,
    Section,
    SuiteEnv,
    SuiteError,
    free_port,
    markdown_table,
    processes,
    ratio,
    require,
    section_main,
    wait_http,
)
from comparison.contenders import Backend, nginx_config
from comparison.pinned import (
    Cores,
    Route,
    core_ticks,
    cores_for,
    start_corral,
    tree_cpu,
)
from comparison.relay import run_relay
from comparison.ticker.backend import info_bodies

MODEL = "instant"
TOKENS = 32
"""Content chunks (tokens) in the fixed streamed answer."""
SLOTS = 256
"""Slots the backend reports: more than wrk's connections, so Corral never holds a
request back (it sends a server no more requests than it has slots)."""
REQUEST_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
    separators=(",", ":"),
)
STREAM_PATH = "/v1/chat/completions"
_MARK = "CORRAL_WRK "


@dataclass(frozen=True, slots=True)
class Scale:
    rounds: int
    """Each path is measured this many times, the paths taking turns; figures are
    the median over rounds (a shared machine drifts, and taking turns spreads the
    drift over every path alike)."""
    warmup: int
    """Seconds of load on each path before it is measured (connection pools, caches)."""
    latency_seconds: int
    throughput_seconds: int
    connections: int
    """wrk's connections for the requests/s figure."""


FULL = Scale(rounds=3, warmup=3, latency_seconds=5, throughput_seconds=5, connections=64)
QUICK = Scale(rounds=1, warmup=1, latency_seconds=1, throughput_seconds=1, connections=8)


# ------------------------------------------------------------------ the instant backend


def _chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
    """One OpenAI ``chat.completion.chunk``, in llama-server's field order."""
    return {
        "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
        "created": 1700000000,
        "id": "chatcmpl-instant",
        "model": MODEL,
        "system_fingerprint": "instant",
        "object": "chat.completion.chunk",
        **extra,
    }


def chat_stream(tokens: int = TOKENS) -> str:
    """The streamed answer, as llama-server sends it: a role chunk, one chunk per
    token, a last chunk with ``finish_reason`` and ``timings`` (which Corral reads to
    count tokens), then ``data: [DONE]``."""
    timings = {
        "prompt_n": 9,
        "prompt_ms": 1.0,
        "predicted_n": tokens,
        "predicted_ms": float(tokens),
    }
    frames = [
        _chunk({"role": "assistant", "content": None}, None),
        *(_chunk({"content": " tok"}, None) for _ in range(tokens)),
        _chunk({}, "length", timings=timings),
    ]
    events = [f"data: {json.dumps(f, separators=(',', ':'))}\n\n" for f in frames]
    return "".join(events) + "data: [DONE]\n\n"


def backend_files(tokens: int = TOKENS, slots: int = SLOTS) -> dict[str, str]:
    """Every answer of the backend, by URL path: the JSON of the endpoints Corral's
    agent reads (:mod:`corral.agent.runners.llamacpp`; all slots idle, one model, a context
    size) and the streamed chat completion."""
    files = {path: body.decode() for path, body in info_bodies(slots, MODEL).items()}
    files[STREAM_PATH] = chat_stream(tokens)
    return files


def write_backend(root: Path, tokens: int = TOKENS, slots: int = SLOTS) -> None:
    """Write :func:`backend_files` under ``root``, where nginx serves them from."""
    for path, text in backend_files(tokens, slots).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def backend_config(port: int, work: Path, root: Path, user: str | None = None) -> str:
    """nginx as an instant llama-server, serving the files :func:`write_backend` wrote.

    ``user``: whom the worker runs as, given when the suite runs as root. nginx's
    workers would otherwise drop to ``nobody``, who cannot read the suite's private
    scratch directory.

    The JSON endpoints are plain static files. The stream is a static file too, but
    it is asked for with POST, which nginx's static files refuse with 405:
    ``error_page 405 =200 $uri`` serves the file instead (nginx redirects an error
    page as a GET). ``ssi on`` (the file holds no SSI commands) makes nginx drop the
    Content-Length, so the stream goes out with chunked transfer encoding, as
    llama-server sends it; with a Content-Length Corral would read the answer whole
    instead of taking its streaming relay.
    """
    gets = "\n".join(
        f"    location = {path} {{ default_type application/json; }}"
        for path in backend_files(0, 0)
        if path != STREAM_PATH
    )
    temp = " ".join(
        f"{kind}_temp_path {work / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{f"user {user};" if user else ""}
worker_processes 1;
pid {work / "nginx.pid"};
error_log {work / "error.log"} warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  open_file_cache max=16 inactive=600s;
  open_file_cache_valid 600s;
  {temp}
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {root};
{gets}
    location = {STREAM_PATH} {{
      default_type text/event-stream;
      ssi on;
      ssi_types text/event-stream;
      error_page 405 =200 $uri;
    }}
    location / {{
      default_type application/json;
      return 404 '{{"error":{{"code":404,"message":"not found","type":"not_found_error"}}}}';
    }}
  }}
}}
"""


def wrk_script(body: str = REQUEST_BODY) -> str:
    """wrk's Lua script: POST ``body``; at the end, print the figures as one JSON line
    (exact microseconds and error counts, rather than wrk's rounded report)."""
    if "]]" in body:
        raise SuiteError("the request body may not contain ']]' (Lua long string)")
    return f"""wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{_MARK}{{"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%.1f,"p90_us":%.1f,' ..
    '"p99_us":%.1f,"mean_us":%.2f,"max_us":%.1f,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# ------------------------------------------------------------------ wrk's figures


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. Latencies are per request, in microseconds."""

    requests: int
    seconds: float
    bytes: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    max_us: float
    socket_errors: int
    """connect, read, write and timeout errors together."""
    bad_status: int
    """Responses that were not 2xx or 3xx."""

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.bad_status


def parse_wrk(output: str) -> WrkResult:
    """The figures of one wrk run, from the line :func:`wrk_script` prints at the end.

    Raises:
        SuiteError: the line is missing (wrk failed before the end) or malformed.
    """
    for line in reversed(output.splitlines()):
        if line.startswith(_MARK):
            try:
                raw = json.loads(line[len(_MARK) :])
                return WrkResult(
                    requests=int(raw["requests"]),
                    seconds=raw["duration_us"] / 1e6,
                    bytes=int(raw["bytes"]),
                    p50_us=float(raw["p50_us"]),
                    p90_us=float(raw["p90_us"]),
                    p99_us=float(raw["p99_us"]),
                    mean_us=float(raw["mean_us"]),
                    max_us=float(raw["max_us"]),
                    socket_errors=sum(int(raw[k]) for k in ("connect", "read", "write", "timeout")),
                    bad_status=int(raw["status"]),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise SuiteError(f"cannot read wrk's summary line {line!r}: {exc}") from None
    tail = "\n".join(output.splitlines()[-15:])
    raise SuiteError(f"wrk printed no summary (did it fail?):\n{tail}")


# ------------------------------------------------------------------ measuring


@dataclass(slots=True)
class Measured:
    """Every round of one path."""

    name: str
    latency: list[WrkResult]
    throughput: list[WrkResult]
    proxy_cpu: list[float]
    """CPU seconds the proxy used during each throughput run."""
    proxy_busy: list[float]
    """Share of one core the proxy used during each throughput run."""
    load_busy: list[float]
    """Share of the load generator's core that was busy during each throughput run."""

    def median(self, runs: str, figure: str) -> float:
        values = [float(getattr(r, figure)) for r in getattr(self, runs)]
        return statistics.median(values) if values else 0.0

    @property
    def errors(self) -> int:
        return sum(r.errors for r in (*self.latency, *self.throughput))


async def wrk(
    env: SuiteEnv,
    core: str,
    url: str,
    script: Path,
    connections: int,
    seconds: int,
    log: Path,
) -> WrkResult:
    """Run wrk once (one thread, pinned to ``core``) and read its figures."""
    command = env.pin(core, [
        require("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        "--timeout", "10s", "-s", str(script), url,
    ])  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except TimeoutError:
        raise SuiteError(f"wrk did not finish a {seconds} s run within {seconds + 30} s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    with log.open("a") as f:
        f.write(f"$ {' '.join(command)}\n{text}\n")
    if proc.returncode != 0:
        raise SuiteError(f"wrk exited with status {proc.returncode}:\n{text[-2000:]}")
    return parse_wrk(text)


async def measure(
    env: SuiteEnv, paths: Sequence[Route], scale: Scale, cores: Cores, procs: Processes
) -> list[Measured]:
    """Warm every path, then measure them in turns, ``scale.rounds`` times."""
    script = env.work_dir / "overhead" / "post.lua"
    script.write_text(wrk_script())
    log = env.work_dir / "overhead" / "wrk.log"
    url = {p.name: f"{p.url}{STREAM_PATH}" for p in paths}
    results = {p.name: Measured(p.name, [], [], [], [], []) for p in paths}
    for p in paths:
        await wrk(env, cores.load, url[p.name], script, scale.connections, scale.warmup, log)
    for round_ in range(scale.rounds):
        for p in paths:
            procs.check_alive()
            m = results[p.name]
            m.latency.append(
                await wrk(env, cores.load, url[p.name], script, 1, scale.latency_seconds, log)
            )
            cpu_before = tree_cpu(p.proxy_pid) if p.proxy_pid else 0.0
            busy_before, total_before = core_ticks(cores.load)
            started = time.monotonic()
            run = await wrk(
                env, cores.load, url[p.name], script, scale.connections,
                scale.throughput_seconds, log,
            )  # fmt: skip
            wall = time.monotonic() - started
            busy_after, total_after = core_ticks(cores.load)
            if p.proxy_pid:
                used = tree_cpu(p.proxy_pid) - cpu_before
                m.proxy_cpu.append(used)
                m.proxy_busy.append(used / wall)
            m.load_busy.append((busy_after - busy_before) / max(1, total_after - total_before))
            m.throughput.append(run)
            print(
                f"  overhead round {round_ + 1}/{scale.rounds} {p.name:<7} "
                f"p50 {m.latency[-1].p50_us:.0f} us, {run.requests_per_second:,.0f} req/s",
                file=sys.stderr,
            )
    return [results[p.name] for p in paths]


def _nginx(env: SuiteEnv, core: str, name: str, conf: str, work: Path, procs: Processes) -> int:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "nginx.conf"
    path.write_text(conf)
    command = [require("nginx"), "-p", str(work), "-c", str(path), "-g", "daemon off;"]
    return procs.start(name, env.pin(core, command)).pid


async def start_paths(env: SuiteEnv, cores: Cores, procs: Processes) -> list[Route]:
    """Start the backend, nginx and Corral in front of it; return when all answer."""
    work = env.work_dir / "overhead"
    backend_port = free_port()
    root = work / "backend" / "root"
    write_backend(root)
    user = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
    conf = backend_config(backend_port, work / "backend", root, user)
    _nginx(env, cores.backend, "backend", conf, work / "backend", procs)
    backend = f"http://127.0.0.1:{backend_port}"
    await wait_http(f"{backend}/health", procs=procs)

    nginx_port = free_port()
    upstream = [Backend("instant", backend_port, SLOTS)]
    nginx_pid = _nginx(env, cores.proxy, "nginx-proxy",
                       nginx_config("nginx-rr", upstream, nginx_port, work / "nginx"),
                       work / "nginx", procs)  # fmt: skip
    nginx = f"http://127.0.0.1:{nginx_port}"
    await wait_http(f"{nginx}/health", procs=procs)

    corral, balancer_pid = await start_corral(env, cores, procs, work, backend_port, "instant")
    return [
        Route("direct", backend),
        Route("nginx", nginx, nginx_pid),
        Route("corral", corral, balancer_pid),
    ]


# ------------------------------------------------------------------ the report


@dataclass(frozen=True, slots=True)
class Row:
    """One path's figures (medians over rounds)."""

    name: str
    p50_us: float
    p99_us: float
    requests_per_second: float
    tokens_per_second: float
    proxy_busy: float | None
    cpu_per_request_us: float | None
    """The proxy's CPU time per request: its cost whether or not its core was full."""
    load_busy: float
    errors: int
    bytes_per_response: float


def summarise(measured: Measured, tokens: int = TOKENS) -> Row:
    rps = measured.median("throughput", "requests_per_second")
    runs = [*measured.latency, *measured.throughput]
    count = sum(r.requests for r in runs)
    return Row(
        name=measured.name,
        p50_us=measured.median("latency", "p50_us"),
        p99_us=measured.median("latency", "p99_us"),
        requests_per_second=rps,
        tokens_per_second=rps * tokens,
        proxy_busy=statistics.median(measured.proxy_busy) if measured.proxy_busy else None,
        cpu_per_request_us=statistics.median(
            cpu * 1e6 / max(1, run.requests)
            for cpu, run in zip(measured.proxy_cpu, measured.throughput, strict=True)
        )
        if measured.proxy_cpu
        else None,
        load_busy=statistics.median(measured.load_busy) if measured.load_busy else 0.0,
        errors=measured.errors,
        bytes_per_response=sum(r.bytes for r in runs) / count if count else 0.0,
    )


_LABEL = {"direct": "direct (no proxy)", "nginx": "nginx", "corral": "**Corral**"}
HEADER = ["path", "p50 (µs)", "p99 (µs)", "added p50 (µs)", "added p99 (µs)",
          "requests/s", "streamed tokens/s", "proxy core busy", "proxy CPU µs/request",
          "load core busy", "errors"]  # fmt: skip


def table(rows: Sequence[Row]) -> str:
    direct = next((r for r in rows if r.name == "direct"), None)

    def added(r: Row, figure: str) -> str:
        if direct is None or r.name == "direct":
            return "-"
        return f"{getattr(r, figure) - getattr(direct, figure):+,.0f}"

    return markdown_table(HEADER, [
        [
            _LABEL.get(r.name, r.name), f"{r.p50_us:,.0f}", f"{r.p99_us:,.0f}",
            added(r, "p50_us"), added(r, "p99_us"), f"{r.requests_per_second:,.0f}",
            f"{r.tokens_per_second:,.0f}",
            "-" if r.proxy_busy is None else f"{r.proxy_busy:.0%}",
            "-" if r.cpu_per_request_us is None else f"{r.cpu_per_request_us:,.0f}",
            f"{r.load_busy:.0%}", r.errors,
        ]
        for r in rows
    ])  # fmt: skip


def findings(rows: Sequence[Row], tokens: int = TOKENS) -> list[str]:
    """The ratios, and what they mean, in words; every figure from ``rows``."""
    by = {r.name: r for r in rows}
    direct, nginx, corral = by.get("direct"), by.get("nginx"), by.get("corral")
    if direct is None or nginx is None or corral is None:
        return []
    c_add50, n_add50 = corral.p50_us - direct.p50_us, nginx.p50_us - direct.p50_us
    c_add99, n_add99 = corral.p99_us - direct.p99_us, nginx.p99_us - direct.p99_us
    c_rps, n_rps, d_rps = (r.requests_per_second for r in (corral, nginx, direct))
    lines = [
        f"- Latency at one connection: Corral adds {c_add50:,.0f} µs at p50 and "
        f"{c_add99:,.0f} µs at p99; nginx adds {n_add50:,.0f} µs and {n_add99:,.0f} µs. "
        f"Corral's p50 is {ratio(corral.p50_us, nginx.p50_us)} nginx's and "
        f"{ratio(corral.p50_us, direct.p50_us)} the direct path's.",
        f"- Requests/s at many connections: Corral sustains {c_rps:,.0f}, "
        f"{ratio(c_rps, n_rps)} nginx's {n_rps:,.0f} and {ratio(c_rps, d_rps)} the "
        f"direct path's {d_rps:,.0f}.",
    ]
    c_cpu, n_cpu = corral.cpu_per_request_us, nginx.cpu_per_request_us
    if c_cpu is not None and n_cpu is not None:
        lines.append(
            f"- CPU per request: Corral spends {c_cpu:,.0f} µs of its core on each "
            f"request, {ratio(c_cpu, n_cpu)} nginx's {n_cpu:,.0f} µs. This is the "
            "figure to size a balancer by: it does not depend on whether the proxy's "
            "core was the bottleneck."
        )
    if corral.requests_per_second < nginx.requests_per_second or c_add50 > n_add50:
        lines.append(
            "- **Corral loses to nginx here.** Both do the same work per request (parse "
            "the request, pick the server, send it upstream on a kept-alive connection, "
            "relay the stream), but nginx does it in C, while Corral's data path is "
            "Python on uvloop with httptools (the sockets and HTTP parsing are C, the rest "
            "is interpreted): per request it runs its handler coroutine, decodes the "
            "`model` field of the body (msgspec), reserves and frees a slot in its "
            "dispatcher, writes the upstream request head, relays the stream, and updates "
            "its Prometheus metrics, including the token counts it reads from the last "
            "event of the stream. That work is what buys slot-aware routing and the request "
            "buffer, which nginx does not have."
        )
    if corral.proxy_busy is not None and corral.proxy_busy >= 0.9:
        lines.append(
            f"- Corral's core was {corral.proxy_busy:.0%} busy: its requests/s is the "
            "limit of one core."
        )
    if nginx.proxy_busy is not None and nginx.proxy_busy < 0.9:
        lines.append(
            f"- nginx's core was only {nginx.proxy_busy:.0%} busy while the load "
            f"generator's was {nginx.load_busy:.0%}: nginx's requests/s is the limit of "
            "wrk and the backend, not of nginx, so the gap between nginx and Corral in "
            "requests/s is at least what the table shows."
        )
    if direct.load_busy >= 0.9:
        lines.append(
            f"- The direct path's {d_rps:,.0f} requests/s is what the load core "
            f"({direct.load_busy:.0%} busy) manages with wrk and the backend on it, not "
            "a limit of the backend alone."
        )
    per_token = 1e6 / 50  # a llama-server slot decoding 50 tokens/s
    lines.append(
        f"- For scale: a llama-server slot decoding 50 tokens/s (a rate assumed for "
        f"illustration, not measured here) takes {per_token:,.0f} µs per token, so the "
        f"{c_add50:,.0f} µs Corral adds to a request is {c_add50 / per_token:.1%} of "
        "the time of one token."
    )
    return lines


def setup_text(scale: Scale, cores: Cores, env: SuiteEnv, body_bytes: int) -> list[str]:
    share = (
        f"wrk and the backend share core {cores.load} (this machine has {env.cores} cores)"
        if cores.load == cores.backend
        else f"wrk runs on core {cores.load}, the backend and Corral's agent on core "
        f"{cores.backend}"
    )
    pinning = (
        f"The proxies are pinned to core {cores.proxy} (taskset); {share}, so the load "
        "generator and the proxy do not fight for one core."
        if env.cores > 1
        else "This machine has one core: nothing is pinned, and every figure includes "
        "the load generator competing with the proxy for it."
    )
    return [
        "What each request costs in the proxy itself. The backend answers at once: nginx "
        f"with one worker serving, for every `POST /v1/chat/completions`, the same "
        f"streamed chat completion ({TOKENS} token chunks in OpenAI's "
        f"`chat.completion.chunk` format, a last chunk with `finish_reason` and "
        f"`timings`, then `data: [DONE]`; {body_bytes:,} bytes, `text/event-stream`, "
        "chunked transfer encoding as llama-server sends it), and fixed JSON on "
        f"`/health`, `/slots` ({SLOTS} idle slots), `/props` and `/v1/models`, so "
        "Corral's agent registers it as a llama-server.",
        "",
        "Three paths to it: **direct** (wrk to the backend), **nginx** (one worker, "
        "HTTP/1.1 with kept-alive upstream connections, `proxy_buffering off`: the "
        "configuration of the routing section) and **Corral** (`corral balancer` "
        "with `corral agent` registering the backend; "
        f"{SLOTS} slots, so Corral never holds a request back). {pinning}",
        "",
        f"wrk (one thread) POSTs `{REQUEST_BODY}`. Latency is that of the whole "
        "streamed response, one request at a time: "
        f"`wrk -t1 -c1 -d{scale.latency_seconds}s`. "
        f"Requests/s: `wrk -t1 -c{scale.connections} -d{scale.throughput_seconds}s`; "
        f"streamed tokens/s is requests/s x {TOKENS}. Each path is warmed for "
        f"{scale.warmup} s, then the paths take turns, {scale.rounds} round(s); the "
        "table shows medians over rounds. *added*: the path's latency minus the direct "
        "path's. *proxy core busy*: CPU time of the proxy's processes over the "
        "requests/s run, as a share of one core; *proxy CPU µs/request*: that CPU time "
        "divided by the requests served; *load core busy*: the busy share of the core "
        "wrk runs on.",
        "",
        "Because the answer is precomputed, the backend writes the whole stream at "
        "once and it reaches the proxy in one or a few TCP segments: these figures are "
        "the cost per request. A real llama-server writes each token when it is "
        "decoded, milliseconds apart, and then every token costs a proxy one more read "
        "and write (for Corral, one more pass through its relay callback), which this "
        "table does not measure; streamed tokens/s here is therefore an upper bound "
        f"for {TOKENS}-token answers. The token-by-token part below measures it.",
    ]


def draw(rows: Sequence[Row], env: SuiteEnv, connections: int) -> str:
    """One PNG: added latency (p50, p99) and requests/s per path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    direct = next(r for r in rows if r.name == "direct")
    proxies = [r for r in rows if r.name != "direct"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    xs = range(len(proxies))
    left.bar([x - 0.2 for x in xs], [r.p50_us - direct.p50_us for r in proxies], 0.4,
             label="p50")  # fmt: skip
    left.bar([x + 0.2 for x in xs], [r.p99_us - direct.p99_us for r in proxies], 0.4,
             label="p99")  # fmt: skip
    left.set_xticks(list(xs), [r.name for r in proxies])
    left.set_ylabel("latency added to a request (µs)")
    left.legend(fontsize="small")
    right.bar(range(len(rows)), [r.requests_per_second for r in rows], 0.6)
    right.set_xticks(range(len(rows)), [r.name for r in rows])
    right.set_ylabel(f"requests/s at {connections} connections")
    for ax in (left, right):
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"data path overhead, instant backend, {TOKENS}-token streams")
    fig.tight_layout()
    env.out_dir.mkdir(parents=True, exist_ok=True)
    path = env.out_dir / "overhead.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![added latency and requests/s]({env.chart_link(path.name)})"


def check(measured: Sequence[Measured], rows: Sequence[Row], stream_bytes: int, log: Path) -> None:
    """:class:`SuiteError` unless every path answered every request with the whole
    stream: wrk counts error answers as requests, so a broken path would otherwise
    look fast."""
    for m, r in zip(measured, rows, strict=True):
        bad = sum(run.bad_status for run in (*m.latency, *m.throughput))
        if bad:
            raise SuiteError(f"{m.name}: {bad} answers were not 2xx (wrk's output: {log})")
        if r.requests_per_second <= 0:
            raise SuiteError(f"{m.name}: no request completed (wrk's output: {log})")
        if r.bytes_per_response < stream_bytes:
            raise SuiteError(
                f"{m.name}: answers averaged {r.bytes_per_response:,.0f} bytes, less than "
                f"the {stream_bytes:,} bytes of the stream: streams were cut short"
            )


async def run(env: SuiteEnv) -> Section:
    scale = QUICK if env.quick else FULL
    cores = cores_for(env.cores)
    for program in ("nginx", "wrk"):
        require(program)
    with processes(env, "overhead") as procs:
        paths = await start_paths(env, cores, procs)
        measured = await measure(env, paths, scale, cores, procs)
        procs.stop_all()  # the relay part runs alone
        rows = [summarise(m) for m in measured]
        corral = next((r for r in rows if r.name == "corral"), None)
        relay_md, relay_data = await run_relay(
            env, cores, procs, corral.cpu_per_request_us if corral else None, TOKENS
        )
    check(measured, rows, len(chat_stream().encode()), env.work_dir / "overhead" / "wrk.log")
    md = [
        *setup_text(scale, cores, env, len(chat_stream().encode())),
        "",
        table(rows),
        "",
        *findings(rows),
        "",
        draw(rows, env, scale.connections),
        "",
        *relay_md,
    ]
    data = {
        "scale": asdict(scale),
        "cores": asdict(cores),
        "tokens_per_response": TOKENS,
        "rows": [asdict(r) for r in rows],
        "runs": {
            m.name: {
                "latency": [asdict(r) for r in m.latency],
                "throughput": [asdict(r) for r in m.throughput],
                "proxy_cpu_seconds": m.proxy_cpu,
                "proxy_busy": m.proxy_busy,
                "load_busy": m.load_busy,
            }
            for m in measured
        },
        "token_relay": relay_data,
    }
    return Section("Overhead of the data path", "\n".join(md), data)


def main(argv: Sequence[str] | None = None) -> int:
    return section_main("overhead", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())

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

A second part measures that cost, token by token: :mod:`corral.bench.ticker`, a cheap
Python backend that paces every stream at a fixed rate (one event per token, each in
its own write), reached directly and through Corral by hundreds of concurrent
streams; it reports tokens/s delivered and Corral's CPU time per token.

    python -m corral.bench.suite.overhead [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
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

from corral.bench.suite.common import (
    CORRAL,
    Processes,
    Section,
    SuiteEnv,
    SuiteError,
    agents_ready,
    cpu_seconds,
    free_port,
    get_json,
    markdown_table,
    processes,
    require,
    section_main,
    wait_http,
)
from corral.bench.suite.contenders import Backend, nginx_config
from corral.bench.ticker import GO, STOP, TOKEN_EVENT, DriveResult, parse_result

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


@dataclass(frozen=True, slots=True)
class Cores:
    """Which cores (taskset syntax) each part runs on."""

    proxy: str
    load: str
    backend: str


def cores_for(count: int) -> Cores:
    """The proxy gets core 0 alone. With three cores or more, wrk and the backend get
    one each; with two they share core 1 (the backend is nginx, far cheaper than
    either proxy). Corral's agent runs with the backend; it reads the backend twice
    a second and otherwise sleeps."""
    if count >= 3:
        return Cores(proxy="0", load="1", backend="2")
    return Cores(proxy="0", load="1", backend="1")


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
    agent reads (:mod:`corral.agent.reader`; all slots idle, one model, a context
    size) and the streamed chat completion."""
    slot = {
        "n_ctx": 4096,
        "speculative": False,
        "id_task": -1,
        "is_processing": False,
        "n_prompt_tokens": 0,
        "next_token": [
            {"has_next_token": False, "has_new_line": False, "n_remain": -1, "n_decoded": 0}
        ],
    }
    props = {
        "default_generation_settings": {"n_ctx": 4096},
        "total_slots": slots,
        "model_alias": MODEL,
        "model_path": f"/models/{MODEL}.gguf",
        "modalities": {"vision": False, "audio": False},
        "build_info": "instant",
    }
    model = {"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "llamacpp"}
    bodies = {
        "/health": {"status": "ok"},
        "/slots": [{"id": i, **slot} for i in range(slots)],
        "/props": props,
        "/v1/models": {"object": "list", "data": [model]},
    }
    files = {path: json.dumps(body, separators=(",", ":")) for path, body in bodies.items()}
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


# ------------------------------------------------------------------ CPU accounting


def cpu_ticks(stat: str, core: int) -> tuple[int, int]:
    """(busy, total) jiffies of ``core`` from the text of ``/proc/stat``."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == f"cpu{core}":
            values = [int(v) for v in fields[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            return sum(values[:8]) - idle, sum(values[:8])
    raise SuiteError(f"/proc/stat has no line for core {core}")


def _core_ticks(cores: str) -> tuple[int, int]:
    stat = Path("/proc/stat").read_text()
    first = int(cores.split(",")[0].split("-")[0])
    return cpu_ticks(stat, first)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's workers are children of its master)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def _tree_cpu(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


# ------------------------------------------------------------------ measuring


@dataclass(slots=True)
class Route:
    """One way to the backend, and the process (tree) that relays, if any."""

    name: str
    url: str
    proxy_pid: int | None = None


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
            cpu_before = _tree_cpu(p.proxy_pid) if p.proxy_pid else 0.0
            busy_before, total_before = _core_ticks(cores.load)
            started = time.monotonic()
            run = await wrk(
                env, cores.load, url[p.name], script, scale.connections,
                scale.throughput_seconds, log,
            )  # fmt: skip
            wall = time.monotonic() - started
            busy_after, total_after = _core_ticks(cores.load)
            if p.proxy_pid:
                used = _tree_cpu(p.proxy_pid) - cpu_before
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

    corral, balancer_pid = await _start_corral(env, cores, procs, work, backend_port, "instant")
    return [
        Route("direct", backend),
        Route("nginx", nginx, nginx_pid),
        Route("corral", corral, balancer_pid),
    ]


async def _start_corral(
    env: SuiteEnv, cores: Cores, procs: Processes, work: Path, backend_port: int, name: str
) -> tuple[str, int]:
    """A balancer on the proxy core and an agent registering the backend at
    ``backend_port`` (on the backend core); return the balancer's URL and pid once
    the agent is ready."""
    port, management = free_port(), free_port()
    balancer = procs.start(
        f"corral-balancer-{name}",
        env.pin(cores.proxy, [
            *CORRAL, "balancer", "--log-level", "error",
            "--inference-addr", f"127.0.0.1:{port}",
            "--management-addr", f"127.0.0.1:{management}",
            "--state-file", str(work / f"corral-state-{name}.json"),
        ]),
    )  # fmt: skip
    mgmt = f"http://127.0.0.1:{management}"
    await wait_http(f"{mgmt}/health", procs=procs)
    procs.start(
        f"corral-agent-{name}",
        env.pin(cores.backend, [
            *CORRAL, "agent", "--log-level", "error", "--name", name,
            "--local-llamacpp-addr", f"127.0.0.1:{backend_port}",
            "--management-addr", f"127.0.0.1:{management}",
        ]),
    )  # fmt: skip
    await agents_ready(mgmt, 1, procs)
    corral = f"http://127.0.0.1:{port}"
    await wait_http(f"{corral}/health", procs=procs)
    return corral, balancer.pid


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


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


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
        f"Corral's p50 is {_ratio(corral.p50_us, nginx.p50_us)} nginx's and "
        f"{_ratio(corral.p50_us, direct.p50_us)} the direct path's.",
        f"- Requests/s at many connections: Corral sustains {c_rps:,.0f}, "
        f"{_ratio(c_rps, n_rps)} nginx's {n_rps:,.0f} and {_ratio(c_rps, d_rps)} the "
        f"direct path's {d_rps:,.0f}.",
    ]
    c_cpu, n_cpu = corral.cpu_per_request_us, nginx.cpu_per_request_us
    if c_cpu is not None and n_cpu is not None:
        lines.append(
            f"- CPU per request: Corral spends {c_cpu:,.0f} µs of its core on each "
            f"request, {_ratio(c_cpu, n_cpu)} nginx's {n_cpu:,.0f} µs. This is the "
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
        "and write (for Corral, one more turn of its Python relay loop), which this "
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


# ------------------------------------------------------------------ token by token


@dataclass(frozen=True, slots=True)
class RelayScale:
    """The token-by-token part: paced streams from :mod:`corral.bench.ticker`."""

    rounds: int
    warmup: float
    """Seconds of streaming on each path before counting starts (each round)."""
    seconds: float
    """Seconds of counting per path and round."""
    connections: int
    """Concurrent streams, each asking for the next as soon as one ends."""
    rate: float
    """Tokens per second per stream (the ticker's ticks per second)."""
    tokens: int
    """Tokens per stream."""

    @property
    def offered(self) -> float:
        """Tokens per second the backend sends when it keeps pace."""
        return self.connections * self.rate


RELAY_FULL = RelayScale(rounds=3, warmup=3.0, seconds=10.0, connections=256, rate=200.0,
                        tokens=400)  # fmt: skip
RELAY_QUICK = RelayScale(rounds=1, warmup=0.5, seconds=1.0, connections=16, rate=200.0,
                         tokens=20)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RelayRun:
    """One counting window of one path."""

    drive: DriveResult
    wall: float
    """Seconds between the driver's start and stop lines, as the suite saw them."""
    proxy_cpu: float | None
    """CPU seconds of the proxy during the window (None: no proxy)."""
    backend_cpu: float
    load_busy: float
    proxy_core_busy: float
    """Busy share of the proxy's core, every process on it counted."""

    @property
    def tokens_per_second(self) -> float:
        return self.drive.tokens_per_second


@dataclass(frozen=True, slots=True)
class RelayRow:
    """One path's token-by-token figures (medians over rounds, counts summed)."""

    name: str
    connections: int
    offered_tokens_per_second: float
    tokens_per_second: float
    proxy_busy: float | None
    cpu_per_token_us: float | None
    """The proxy's CPU time per token delivered, per-request work included."""
    tokens_per_core_second: float | None
    """1e6 / :attr:`cpu_per_token_us`: what one core would relay at this cost."""
    backend_cpu_per_token_us: float
    load_busy: float
    proxy_core_busy: float
    """Busy share of the proxy's core, every process on it counted (above
    :attr:`proxy_busy`: something else ran there too)."""
    tokens_per_read: float
    """Token events per read at the client (more than 1: events arrived together)."""
    tokens: int
    streams: int
    bad_streams: int
    connection_errors: int


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarise_relay(name: str, runs: Sequence[RelayRun], scale: RelayScale) -> RelayRow:
    proxied = [r for r in runs if r.proxy_cpu is not None]
    per_token = (
        _median([(r.proxy_cpu or 0.0) * 1e6 / max(1, r.drive.tokens) for r in proxied])
        if proxied
        else None
    )
    return RelayRow(
        name=name,
        connections=scale.connections,
        offered_tokens_per_second=scale.offered,
        tokens_per_second=_median([r.tokens_per_second for r in runs]),
        proxy_busy=_median([(r.proxy_cpu or 0.0) / r.wall for r in proxied]) if proxied else None,
        cpu_per_token_us=per_token,
        tokens_per_core_second=1e6 / per_token if per_token else None,
        backend_cpu_per_token_us=_median(
            [r.backend_cpu * 1e6 / max(1, r.drive.tokens) for r in runs]
        ),
        load_busy=_median([r.load_busy for r in runs]),
        proxy_core_busy=_median([r.proxy_core_busy for r in runs]),
        tokens_per_read=_median([r.drive.tokens / max(1, r.drive.reads) for r in runs]),
        tokens=sum(r.drive.tokens for r in runs),
        streams=sum(r.drive.streams for r in runs),
        bad_streams=sum(r.drive.bad_streams for r in runs),
        connection_errors=sum(r.drive.connection_errors for r in runs),
    )


async def start_relay(
    env: SuiteEnv, cores: Cores, scale: RelayScale, procs: Processes
) -> tuple[list[Route], int]:
    """Start the ticker backend and Corral in front of it; return the paths and the
    ticker's pid once all answer."""
    work = env.work_dir / "overhead"
    port = free_port()
    ticker = procs.start("ticker", env.pin(cores.backend, [
        sys.executable, "-m", "corral.bench.ticker", "--port", str(port),
        "--slots", str(2 * scale.connections), "--tokens", str(scale.tokens),
        "--rate", str(scale.rate),
    ]))  # fmt: skip
    backend = f"http://127.0.0.1:{port}"
    await wait_http(f"{backend}/health", procs=procs)
    corral, balancer_pid = await _start_corral(env, cores, procs, work, port, "ticker")
    return [Route("direct", backend), Route("corral", corral, balancer_pid)], ticker.pid


async def drive_once(
    env: SuiteEnv,
    cores: Cores,
    route: Route,
    backend_pid: int,
    scale: RelayScale,
    log: Path,
) -> RelayRun:
    """One run of the ticker's driver (pinned to the load core) against ``route``,
    with the CPU counters read when it says counting starts and stops."""
    command = env.pin(cores.load, [
        sys.executable, "-m", "corral.bench.ticker", "--drive", route.url,
        "--connections", str(scale.connections), "--tokens", str(scale.tokens),
        "--warmup", str(scale.warmup), "--seconds", str(scale.seconds),
    ])  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )

    Sample = tuple[float, float, tuple[int, int], tuple[int, int], float]

    def sample() -> Sample:
        proxy = _tree_cpu(route.proxy_pid) if route.proxy_pid else 0.0
        ticks = _core_ticks(cores.load), _core_ticks(cores.proxy)
        return proxy, _tree_cpu(backend_pid), *ticks, time.monotonic()

    lines: list[str] = []
    marks: dict[str, Sample] = {}
    assert proc.stdout is not None

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line in (GO, STOP):
                marks[line] = sample()
            lines.append(line)
        await proc.wait()

    limit = scale.warmup + scale.seconds + 60
    try:
        await asyncio.wait_for(read(), limit)
    except TimeoutError:
        raise SuiteError(f"the ticker's driver did not finish within {limit:.0f} s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "\n".join(lines)
    with log.open("a") as f:
        f.write(f"$ {' '.join(command)}\n{text}\n")
    if proc.returncode != 0 or GO not in marks or STOP not in marks:
        raise SuiteError(f"the ticker's driver failed (status {proc.returncode}):\n{text[-2000:]}")
    try:
        result = parse_result(text)
    except (ValueError, TypeError) as exc:
        raise SuiteError(f"cannot read the ticker driver's result: {exc}") from None
    (p0, b0, load0, core0, t0), (p1, b1, load1, core1, t1) = marks[GO], marks[STOP]

    def busy(before: tuple[int, int], after: tuple[int, int]) -> float:
        return (after[0] - before[0]) / max(1, after[1] - before[1])

    return RelayRun(
        drive=result,
        wall=t1 - t0,
        proxy_cpu=p1 - p0 if route.proxy_pid else None,
        backend_cpu=b1 - b0,
        load_busy=busy(load0, load1),
        proxy_core_busy=busy(core0, core1),
    )


async def measure_relay(
    env: SuiteEnv,
    paths: Sequence[Route],
    backend_pid: int,
    scale: RelayScale,
    cores: Cores,
    procs: Processes,
) -> dict[str, list[RelayRun]]:
    """Every path, ``scale.rounds`` times, the paths taking turns."""
    log = env.work_dir / "overhead" / "ticker-driver.log"
    runs: dict[str, list[RelayRun]] = {p.name: [] for p in paths}
    for round_ in range(scale.rounds):
        for p in paths:
            procs.check_alive()
            run = await drive_once(env, cores, p, backend_pid, scale, log)
            runs[p.name].append(run)
            busy = "" if run.proxy_cpu is None else f", proxy {run.proxy_cpu / run.wall:.0%}"
            print(
                f"  token relay round {round_ + 1}/{scale.rounds} {p.name:<7} "
                f"{run.tokens_per_second:,.0f} tokens/s{busy}",
                file=sys.stderr,
            )
    return runs


def check_relay(rows: Sequence[RelayRow], scale: RelayScale) -> None:
    """:class:`SuiteError` unless every path delivered tokens, every stream that ended
    was whole, and the tokens counted fit the streams that ended: at most one
    stream per connection can straddle each end of a window."""
    for r in rows:
        if r.tokens <= 0:
            raise SuiteError(f"token relay, {r.name}: no token arrived")
        if r.bad_streams or r.connection_errors:
            raise SuiteError(
                f"token relay, {r.name}: {r.bad_streams} streams were not whole (status, "
                f"token count or [DONE]) and {r.connection_errors} connections failed"
            )
        straddle = 2 * scale.connections * scale.rounds
        if r.tokens > (r.streams + straddle) * scale.tokens:
            raise SuiteError(
                f"token relay, {r.name}: {r.tokens:,} tokens counted, more than "
                f"{r.streams:,} streams of {scale.tokens} can hold"
            )


_RELAY_LABEL = {"direct": "direct (no proxy)", "corral": "**Corral**"}
RELAY_HEADER = ["path", "streams x tokens/s each", "offered tokens/s", "tokens/s delivered",
                "proxy core busy", "proxy CPU µs/token", "tokens/s per proxy core",
                "backend CPU µs/token", "load core busy", "tokens per read",
                "bad streams"]  # fmt: skip


def relay_table(rows: Sequence[RelayRow], scale: RelayScale) -> str:
    def opt(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return markdown_table(RELAY_HEADER, [
        [
            _RELAY_LABEL.get(r.name, r.name), f"{r.connections} x {scale.rate:,.0f}",
            f"{r.offered_tokens_per_second:,.0f}", f"{r.tokens_per_second:,.0f}",
            opt(r.proxy_busy, ".0%"), opt(r.cpu_per_token_us, ",.1f"),
            opt(r.tokens_per_core_second, ",.0f"), f"{r.backend_cpu_per_token_us:,.1f}",
            f"{r.load_busy:.0%}", f"{r.tokens_per_read:.2f}",
            r.bad_streams + r.connection_errors,
        ]
        for r in rows
    ])  # fmt: skip


def relay_text(scale: RelayScale, cores: Cores, env: SuiteEnv) -> list[str]:
    event = len(TOKEN_EVENT)
    if env.cores == 1:
        where = "nothing is pinned (this machine has one core)"
    elif cores.load == cores.backend:
        where = (
            f"Corral's balancer is pinned to core {cores.proxy}; the ticker, the driver "
            f"and Corral's agent share core {cores.backend}"
        )
    else:
        where = (
            f"Corral's balancer is pinned to core {cores.proxy}, the driver to core "
            f"{cores.load}, the ticker and Corral's agent to core {cores.backend}"
        )
    return [
        "### Token by token",
        "",
        "The figures above are per request. Here the tokens arrive apart in time, as "
        "from a decoding server, so every token costs the proxy a read and a write. The "
        "backend is `python -m corral.bench.ticker` (one Python process, uvloop and "
        "httptools), which poses as a llama-server with "
        f"{2 * scale.connections} idle slots and streams paced tokens: every open "
        f"stream gets one `chat.completion.chunk` event ({event} bytes, its own write "
        f"and its own HTTP chunk) every {1000 / scale.rate:g} ms, all streams in the "
        "same tick, as llama-server's batched decoding emits a token for every busy "
        f"slot per step. A stream is {scale.tokens} tokens "
        f"({scale.tokens / scale.rate:g} s), then a last event with `timings` and "
        "`data: [DONE]`.",
        "",
        "The load generator is the same module with `--drive` (one Python process): it "
        f"keeps {scale.connections} streams open, each connection asking for the next "
        f"stream as soon as one ends, so {scale.connections} x {scale.rate:g} = "
        f"{scale.offered:,.0f} tokens/s are offered; it counts the token events as "
        f"they arrive, for {scale.seconds:g} s after {scale.warmup:g} s of warm-up, "
        f"and checks that every stream that ends is whole. Two paths, **direct** "
        f"(driver to ticker) and **Corral** (balancer and agent as above); {where}. "
        f"The paths take turns, {scale.rounds} round(s); the table shows medians.",
        "",
        "*proxy CPU µs/token*: the balancer's CPU time over the counting window divided "
        "by the tokens delivered; it includes the per-request work, spread over "
        f"{scale.tokens} tokens. *tokens/s per proxy core*: 1,000,000 / that, what "
        "one core would relay at this cost per token (measured when the core is full, "
        "extrapolated when it is not). *backend CPU µs/token*: the same for the "
        "ticker, as a yardstick. *tokens per read*: token events per read at the "
        "driver; above 1, events arrived together, which costs a proxy less per token.",
    ]


def relay_findings(
    rows: Sequence[RelayRow], scale: RelayScale, late_ticks: int, per_request: Row | None
) -> list[str]:
    by = {r.name: r for r in rows}
    direct, corral = by.get("direct"), by.get("corral")
    if direct is None or corral is None:
        return []
    lines = [
        f"- Direct, the driver received {direct.tokens_per_second:,.0f} tokens/s, "
        f"{_ratio(direct.tokens_per_second, scale.offered)} the {scale.offered:,.0f} "
        f"offered; the ticker spent {direct.backend_cpu_per_token_us:,.1f} µs of CPU per "
        f"token, and {late_ticks:,} of its ticks (over the whole part) ran more than "
        "one interval late.",
    ]
    if corral.cpu_per_token_us is not None and corral.proxy_busy is not None:
        per_core = corral.tokens_per_core_second or 0.0
        verdict = "meets" if per_core >= 50_000 else "does not meet"
        full = (
            "its core was nearly full, so it could not relay much more"
            if corral.proxy_busy >= 0.9
            else "extrapolated: its core was not full"
        )
        lines.append(
            f"- Through Corral, {corral.tokens_per_second:,.0f} tokens/s arrived, "
            f"{_ratio(corral.tokens_per_second, direct.tokens_per_second)} the direct "
            f"path's. Corral's core was {corral.proxy_busy:.0%} busy, "
            f"{corral.cpu_per_token_us:,.1f} µs of CPU per token: one core relays about "
            f"{per_core:,.0f} tokens/s at that cost ({full}), which {verdict} the target "
            "of 50,000 streamed tokens/s relayed on one core."
        )
        others = corral.proxy_core_busy - corral.proxy_busy
        if others >= 0.1:
            lines.append(
                f"- Corral's core was {corral.proxy_core_busy:.0%} busy in all, "
                f"{others:.0%} of it other processes of this shared machine: Corral "
                "could not have all of its core, so its tokens/s is below what it would "
                "relay alone; the CPU time per token is the figure to go by."
            )
        if per_request is not None and per_request.cpu_per_request_us is not None:
            share = per_request.cpu_per_request_us / scale.tokens
            lines.append(
                f"- Of those µs per token, the per-request work is roughly "
                f"{share:,.1f} µs: the first table's {per_request.cpu_per_request_us:,.0f} "
                f"µs per request spread over {scale.tokens} tokens (that request also "
                f"relays {TOKENS} tokens, so the per-token work is at least the rest)."
            )
    if corral.tokens_per_read > 1.2 * max(direct.tokens_per_read, 1.0):
        lines.append(
            f"- The driver got {corral.tokens_per_read:.2f} token events per read through "
            f"Corral against {direct.tokens_per_read:.2f} directly: Corral fell behind "
            "the ticks at times (busy, or its core taken by other processes) and then "
            "relayed several events in one write, which costs less per token than one "
            "event per write."
        )
    return lines


async def run(env: SuiteEnv) -> Section:
    scale = QUICK if env.quick else FULL
    cores = cores_for(env.cores)
    for program in ("nginx", "wrk"):
        require(program)
    relay = RELAY_QUICK if env.quick else RELAY_FULL
    with processes(env, "overhead") as procs:
        paths = await start_paths(env, cores, procs)
        measured = await measure(env, paths, scale, cores, procs)
        procs.stop_all()  # the relay part runs alone
        relay_paths, ticker_pid = await start_relay(env, cores, relay, procs)
        relay_runs = await measure_relay(env, relay_paths, ticker_pid, relay, cores, procs)
        ticker_stats = await asyncio.to_thread(get_json, f"{relay_paths[0].url}/stats")
    rows = [summarise(m) for m in measured]
    check(measured, rows, len(chat_stream().encode()), env.work_dir / "overhead" / "wrk.log")
    relay_rows = [summarise_relay(name, runs, relay) for name, runs in relay_runs.items()]
    check_relay(relay_rows, relay)
    if ticker_stats["tokens"] < sum(r.tokens for r in relay_rows):
        raise SuiteError("token relay: the driver counted more tokens than the ticker sent")
    md = [
        *setup_text(scale, cores, env, len(chat_stream().encode())),
        "",
        table(rows),
        "",
        *findings(rows),
        "",
        draw(rows, env, scale.connections),
        "",
        *relay_text(relay, cores, env),
        "",
        relay_table(relay_rows, relay),
        "",
        *relay_findings(
            relay_rows,
            relay,
            int(ticker_stats["late_ticks"]),
            next((r for r in rows if r.name == "corral"), None),
        ),
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
        "token_relay": {
            "scale": {**asdict(relay), "offered": relay.offered},
            "token_event_bytes": len(TOKEN_EVENT),
            "rows": [asdict(r) for r in relay_rows],
            "runs": {
                name: [{**asdict(r), "tokens_per_second": r.tokens_per_second} for r in runs]
                for name, runs in relay_runs.items()
            },
            "ticker": ticker_stats,
        },
    }
    return Section("Overhead of the data path", "\n".join(md), data)


def main(argv: Sequence[str] | None = None) -> int:
    return section_main("overhead", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())

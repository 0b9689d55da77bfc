"""The Batch API on real llama-servers: interactive latency beside a job, and restarts.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/batch_real.py [--quick]
        [--lines 300] [--servers 2] [--slots 2] [--queue priority] [--json report.json]

A real fleet on loopback: ``--servers`` llama-servers of the bundled model (one CPU
thread each, ``--slots`` slots, ``--metrics``), each behind a counting relay
(``benchmarks/counting_relay.py``: counts every POST that reaches a server by its
``X-Request-Id``) and read by its own agent, and one balancer with ``--data-dir``.
Every Batch API call is the official ``openai`` SDK's (``files.create``,
``batches.create``, ``batches.retrieve`` polled, ``files.content``).

1. **Alone.** Interactive users send streamed chat completions at Poisson times
   (``--rate`` per second) for ``--alone`` seconds; their time to first token (TTFT:
   the request sent to the first chunk carrying text) is measured.
2. **With a job.** A batch of ``--lines`` short chat completions (``--max-tokens``)
   is submitted, and the same interactive load runs until the job is done. Reported:
   interactive TTFT p50/p99 with the job over alone, the job's throughput (lines/s,
   creation to ``completed``), lines completed/failed, and the check that the output
   and error files hold exactly one line per ``custom_id``.
3. **Restarts.** The same job again, twice: once the job is a third done, the
   balancer is killed, with SIGKILL in one run and SIGTERM in the other, and started
   again on the same ports and ``--data-dir``; the job then runs to its end.

How "nothing lost, nothing repeated" is checked, for each job:

- *lost*: every ``custom_id`` of the input is in the output or the error file, once
  (``request_counts`` agree);
- *repeated*: the relays' counts of each line's ``X-Request-Id`` (stable per line:
  ``batch_req_<batch>_<index>``): a line sent to a server twice counts 2. The design
  (docs/batch.md) says: after SIGTERM no line is sent twice (lines in flight get
  ``--shutdown-timeout`` to finish and be recorded); after SIGKILL a line may be sent
  twice only if it was in flight at the kill (sent, not yet recorded): so repeats are
  at most ``--batch-concurrency``, and every repeated line was seen by a relay before
  the kill. Both are measured and reported;
- the servers' own counts, as a cross-check that needs no relay: the growth of each
  llama-server's ``llamacpp:tokens_predicted_total`` over the job minus the
  ``completion_tokens`` in the job's output lines is the generation work that is in no
  result (lines run twice, or cut off by the kill); 0 when nothing was repeated.
  (Interactive requests run only in phases 1 and 2, so their tokens are not in it.)

The machine this runs on decides the figures: llama-server on CPU, one thread per
server. ``--quick`` runs a small job (40 lines) and short phases, to prove the script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from openai import OpenAI

from corral.llamacpp import bundled_model, llama_server_command, llama_server_path
from corral.llamacpp.process import free_port, spawn, terminate
from counting_relay import read_counts

MODEL = "gemma"
FINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True, slots=True)
class Scale:
    lines: int
    alone: float  # seconds of interactive load alone
    rate: float  # interactive requests per second (Poisson)
    max_tokens: int  # of batch lines and interactive requests


FULL = Scale(lines=300, alone=60.0, rate=0.5, max_tokens=16)
"""At 0.5/s the interactive users keep about one slot of four busy: the job has idle
capacity to run on. (At 2/s they keep three busy, and batch-class lines, which leave
interactive traffic its headroom, hardly start while they arrive.)"""
QUICK = Scale(lines=40, alone=15.0, rate=2.0, max_tokens=8)


# ------------------------------------------------------------------ processes
class Part:
    """One process, restartable with the same command."""

    def __init__(self, name: str, command: list[str], logs: Path) -> None:
        self.name, self.command = name, command
        self.log_path = logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = spawn(self.command, stdout=log, stderr=subprocess.STDOUT)

    def signal(self, sig: signal.Signals, timeout: float = 30.0) -> float:
        """Send ``sig`` and wait for the process to end; returns seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(sig)
        self.process.wait(timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, timeout=5)


def get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return bytes(response.read())


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class RealFleet:
    """llama-servers behind counting relays, their agents, one balancer."""

    logs: Path
    servers: int
    slots: int
    balancer_args: list[str]
    parts: list[Part] = field(default_factory=list)
    server_ports: list[int] = field(default_factory=list)
    counts_path: Path = field(init=False)
    inference: int = field(init=False, default=0)
    management: int = field(init=False, default=0)
    balancer: Part | None = field(init=False, default=None)

    def start(self) -> None:
        binary, model = llama_server_path(), bundled_model()
        relays = []
        for i in range(self.servers):
            port, relay = free_port(), free_port()
            command = llama_server_command(
                binary, model, port=port, slots=self.slots, ctx_size=1024, threads=1
            )
            self.parts.append(Part(f"llama-server-{i}", [*command, "--metrics"], self.logs))
            self.server_ports.append(port)
            relays.append((relay, port))
        self.counts_path = self.logs / "relay-counts.json"
        relay_script = Path(__file__).with_name("counting_relay.py")
        pairs = [f"{r}:{p}" for r, p in relays]
        command = [sys.executable, str(relay_script), "--counts", str(self.counts_path), *pairs]
        self.parts.append(Part("relay", command, self.logs))
        for port in self.server_ports:
            wait_for(lambda p=port: get(f"http://127.0.0.1:{p}/health"), 180, f"server {port}")
        self.inference, self.management = free_port(), free_port()
        self.balancer = Part("balancer", self._balancer_command(), self.logs)
        self.parts.append(self.balancer)
        self.wait_balancer()
        for i, (relay, _) in enumerate(relays):
            self.parts.append(
                Part(
                    f"agent-{i}",
                    [
                        sys.executable, "-m", "corral", "agent",
                        "--local-llamacpp-addr", f"127.0.0.1:{relay}",
                        "--management-addr", f"127.0.0.1:{self.management}",
                        "--name", f"llama-{i}", "--poll-interval", "0.2",
                    ],
                    self.logs,
                )
            )  # fmt: skip
        self.wait_ready()

    def _balancer_command(self) -> list[str]:
        return [
            sys.executable, "-m", "corral", "balancer",
            "--inference-addr", f"127.0.0.1:{self.inference}",
            "--management-addr", f"127.0.0.1:{self.management}",
            "--state-file", str(self.logs / "balancer-state.json"),
            "--data-dir", str(self.logs / "data"),
            *self.balancer_args,
        ]  # fmt: skip

    def wait_balancer(self) -> None:
        wait_for(lambda: get(f"http://127.0.0.1:{self.management}/health"), 30, "balancer")

    def ready_agents(self) -> int:
        listing = json.loads(get(f"http://127.0.0.1:{self.management}/api/v1/agents"))
        return sum(a["state"] == "ready" for a in listing["agents"])

    def wait_ready(self) -> None:
        wait_for(lambda: self.ready_agents() == self.servers, 60, "every server ready")

    def restart_balancer(self, sig: signal.Signals) -> float:
        """Stop the balancer with ``sig``, start it again; seconds it took to end."""
        assert self.balancer is not None
        took = self.balancer.signal(sig)
        self.balancer.start()
        self.wait_balancer()
        return took

    def in_flight(self) -> int:
        listing = json.loads(get(f"http://127.0.0.1:{self.management}/api/v1/batches"))
        return int(listing["lines_in_flight"])

    def predicted_tokens(self) -> int:
        """Sum over the servers of ``llamacpp:tokens_predicted_total``."""
        total = 0
        for port in self.server_ports:
            for line in get(f"http://127.0.0.1:{port}/metrics").decode().splitlines():
                if line.startswith("llamacpp:tokens_predicted_total"):
                    total += int(float(line.split()[-1]))
        return total

    def stop(self) -> None:
        for part in reversed(self.parts):
            part.stop()


# ------------------------------------------------------------------ interactive load
@dataclass
class Interactive:
    """Streamed chat completions at Poisson times, in threads, until stopped."""

    client: OpenAI
    rate: float
    max_tokens: int
    seed: int
    ttft: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _one(self, i: int) -> None:
        sent = time.perf_counter()
        try:
            stream = self.client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Name a colour. ({i})"}],
                max_tokens=self.max_tokens,
                stream=True,
            )
            first = None
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - sent
            if first is None:
                self.errors.append("no text")
            else:
                self.ttft.append(first)
        except Exception as exc:  # an error is a result here: counted, reported
            self.errors.append(type(exc).__name__)

    def _arrivals(self) -> None:
        rng = random.Random(self.seed)
        i = 0
        while not self._stop.wait(rng.expovariate(self.rate)):
            thread = threading.Thread(target=self._one, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
            i += 1

    def start(self) -> None:
        thread = threading.Thread(target=self._arrivals, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Send no more; wait for the requests sent."""
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ------------------------------------------------------------------ the job
def job_lines(n: int, max_tokens: int, tag: str) -> bytes:
    lines = [
        {
            "custom_id": f"{tag}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Write the number {i} in words."}],
                "max_tokens": max_tokens,
            },
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(x) for x in lines).encode()


@dataclass
class JobResult:
    name: str
    lines: int
    status: str = ""
    completed: int = 0
    failed: int = 0
    seconds: float = 0.0
    lines_per_s: float = 0.0
    once_each: bool = False  # output + error files: every custom_id exactly once
    missing: int = 0
    duplicated_in_files: int = 0
    sent_to_servers: int = 0  # POSTs of this job's lines that reached a server
    never_sent: int = 0  # lines with a result that no relay saw (must be 0)
    repeated: int = 0  # lines sent to a server more than once
    in_flight_at_stop: int | None = None
    repeated_seen_before_stop: bool | None = None  # every repeated line was sent pre-stop
    stop_seconds: float | None = None  # how long the balancer took to end
    extra_tokens: int | None = None  # server-generated tokens in no result
    ttft: dict[str, float] = field(default_factory=dict)


def submit(client: OpenAI, data: bytes) -> str:
    upload = client.files.create(file=("job.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


def poll(client: OpenAI, batch_id: str, until: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            batch = client.batches.retrieve(batch_id)
            if until(batch):
                return batch
        except Exception:  # the balancer is restarting
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} not done in {timeout:g} s")
        time.sleep(0.25)


def check(
    client: OpenAI,
    fleet: RealFleet,
    batch: Any,
    result: JobResult,
    tag: str,
    tokens0: int | None,
) -> None:
    """Fill ``result`` from the batch's files and the relays' counts; with ``tokens0``
    (the servers' generated tokens before the job), the tokens in no result too."""
    result.status = batch.status
    result.completed = batch.request_counts.completed
    result.failed = batch.request_counts.failed
    found: list[dict[str, Any]] = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            text = client.files.content(file_id).text
            found += [json.loads(x) for x in text.splitlines() if x.strip()]
    ids = Counter(x["custom_id"] for x in found)
    expected = {f"{tag}-{i}" for i in range(result.lines)}
    result.missing = len(expected - set(ids))
    result.duplicated_in_files = sum(1 for n in ids.values() if n > 1)
    result.once_each = set(ids) == expected and result.duplicated_in_files == 0
    prefix = f"batch_req_{batch.id.removeprefix('batch_')}_"
    by_id, _ = read_counts(fleet.counts_path)
    mine = {k: n for k, n in by_id.items() if k.startswith(prefix)}
    result.sent_to_servers = sum(mine.values())
    result.repeated = sum(1 for n in mine.values() if n > 1)
    result.never_sent = sum(1 for x in found if x.get("response") and x["id"] not in mine)
    if tokens0 is None:
        return
    recorded = sum(
        x["response"]["body"].get("usage", {}).get("completion_tokens", 0)
        for x in found
        if x.get("response") and isinstance(x["response"].get("body"), dict)
    )
    result.extra_tokens = fleet.predicted_tokens() - tokens0 - recorded


def run_with_load(client: OpenAI, fleet: RealFleet, scale: Scale, seed: int) -> JobResult:
    tag = "with-load"
    result = JobResult("with interactive load", scale.lines)
    load = Interactive(client, scale.rate, scale.max_tokens, seed)
    started = time.monotonic()
    batch_id = submit(client, job_lines(scale.lines, scale.max_tokens, tag))
    load.start()
    batch = poll(client, batch_id, lambda b: b.status in FINAL, 3600)
    result.seconds = time.monotonic() - started
    load.stop()
    result.lines_per_s = scale.lines / result.seconds
    result.ttft = {"p50": percentile(load.ttft, 0.5), "p99": percentile(load.ttft, 0.99),
                   "n": len(load.ttft), "errors": len(load.errors)}  # fmt: skip
    check(client, fleet, batch, result, tag, None)  # interactive tokens mixed in
    return result


def run_restart(client: OpenAI, fleet: RealFleet, scale: Scale, sig: signal.Signals) -> JobResult:
    tag = f"restart-{sig.name.lower()}"
    result = JobResult(f"balancer {sig.name} at a third", scale.lines)
    tokens0 = fleet.predicted_tokens()
    started = time.monotonic()
    batch_id = submit(client, job_lines(scale.lines, scale.max_tokens, tag))
    poll(client, batch_id, lambda b: b.request_counts.completed >= scale.lines // 3, 3600)
    result.in_flight_at_stop = fleet.in_flight()
    by_id, _ = read_counts(fleet.counts_path)
    seen_before = set(by_id)
    result.stop_seconds = fleet.restart_balancer(sig)
    batch = poll(client, batch_id, lambda b: b.status in FINAL, 3600)
    result.seconds = time.monotonic() - started
    result.lines_per_s = scale.lines / result.seconds
    check(client, fleet, batch, result, tag, tokens0)
    prefix = f"batch_req_{batch.id.removeprefix('batch_')}_"
    by_id, _ = read_counts(fleet.counts_path)
    repeated = {k for k, n in by_id.items() if k.startswith(prefix) and n > 1}
    result.repeated_seen_before_stop = repeated <= seen_before
    return result


# ------------------------------------------------------------------ report
def report(alone: dict[str, float], jobs: list[JobResult], args: argparse.Namespace) -> str:
    out = [
        f"{args.servers} llama-servers x {args.slots} slots (bundled model, 1 thread each), "
        f"balancer --queue {args.queue} --batch-concurrency {args.batch_concurrency}; "
        f"interactive: streamed chat at {args.rate:g}/s Poisson, max_tokens {args.max_tokens}",
        "",
        f"interactive alone: TTFT p50 {alone['p50'] * 1000:.0f} ms, p99 "
        f"{alone['p99'] * 1000:.0f} ms ({alone['n']:.0f} requests, {alone['errors']:.0f} errors)",
    ]
    for job in jobs:
        out.append("")
        out.append(f"job {job.name}: {job.lines} lines, {job.status}, completed "
                   f"{job.completed}, failed {job.failed}, {job.seconds:.1f} s, "
                   f"{job.lines_per_s:.2f} lines/s")  # fmt: skip
        if job.ttft and not job.ttft["n"]:
            out.append("  interactive with the job: none sent before the job ended")
        elif job.ttft:
            out.append(
                f"  interactive with the job: TTFT p50 {job.ttft['p50'] * 1000:.0f} ms "
                f"({job.ttft['p50'] / alone['p50']:.2f}x alone), p99 "
                f"{job.ttft['p99'] * 1000:.0f} ms ({job.ttft['p99'] / alone['p99']:.2f}x "
                f"alone), {job.ttft['n']:.0f} requests, {job.ttft['errors']:.0f} errors"
            )
        out.append(
            f"  files: one line per custom_id: {'yes' if job.once_each else 'NO'} "
            f"(missing {job.missing}, duplicated {job.duplicated_in_files})"
        )
        out.append(
            f"  servers got {job.sent_to_servers} POSTs of its lines; lines sent twice or "
            f"more: {job.repeated}; lines with a result no server got: {job.never_sent}"
        )
        if job.in_flight_at_stop is not None:
            out.append(
                f"  at the stop: {job.in_flight_at_stop} lines in flight; the balancer "
                f"ended in {job.stop_seconds:.2f} s; every repeated line was sent before "
                f"the stop: {'yes' if job.repeated_seen_before_stop else 'NO'}; generated "
                f"tokens in no result (servers' own counts): {job.extra_tokens}"
            )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a 40-line job, short phases")
    parser.add_argument("--lines", type=int, help="lines per job (300; quick: 40)")
    parser.add_argument("--alone", type=float, help="seconds of interactive load alone")
    parser.add_argument("--rate", type=float, help="interactive requests per second")
    parser.add_argument("--max-tokens", type=int, help="max_tokens of every request")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2, help="slots per server")
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--queue", default="priority", choices=("fifo", "priority", "fair"))
    parser.add_argument("--no-restarts", action="store_true", help="skip phase 3")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    scale = Scale(
        lines=args.lines or base.lines,
        alone=args.alone or base.alone,
        rate=args.rate or base.rate,
        max_tokens=args.max_tokens or base.max_tokens,
    )
    args.rate, args.max_tokens = scale.rate, scale.max_tokens
    logs = Path(tempfile.mkdtemp(prefix="corral-batch-real-"))
    fleet = RealFleet(
        logs,
        args.servers,
        args.slots,
        ["--queue", args.queue, "--batch-concurrency", str(args.batch_concurrency)],
    )
    try:
        fleet.start()
        client = OpenAI(
            base_url=f"http://127.0.0.1:{fleet.inference}/v1", api_key="none", max_retries=0
        )
        print(f"fleet up (logs: {logs}); interactive alone for {scale.alone:g} s", flush=True)
        load = Interactive(client, scale.rate, scale.max_tokens, args.seed)
        load.start()
        time.sleep(scale.alone)
        load.stop()
        alone = {"p50": percentile(load.ttft, 0.5), "p99": percentile(load.ttft, 0.99),
                 "n": len(load.ttft), "errors": len(load.errors)}  # fmt: skip
        print(f"job of {scale.lines} lines with the interactive load", flush=True)
        jobs = [run_with_load(client, fleet, scale, args.seed + 1)]
        if not args.no_restarts:
            for sig in (signal.SIGKILL, signal.SIGTERM):
                print(f"job of {scale.lines} lines, balancer {sig.name} at a third", flush=True)
                fleet.wait_ready()
                jobs.append(run_restart(client, fleet, scale, sig))
        # interactive requests are served after the restarts
        after = Interactive(client, 2.0, scale.max_tokens, args.seed + 2)
        after.start()
        time.sleep(3)
        after.stop()
    finally:
        fleet.stop()
    text = report(alone, jobs, args)
    text += f"\n\nafter the restarts: {len(after.ttft)} interactive requests served, "
    text += f"{len(after.errors)} errors"
    print()
    print(text)
    if args.json:
        data = {"args": {k: str(v) for k, v in vars(args).items()}, "alone": alone,
                "jobs": [asdict(j) for j in jobs]}  # fmt: skip
        args.json.write_text(json.dumps(data, indent=2))
    if not args.keep_logs:
        shutil.rmtree(logs, ignore_errors=True)
    ok = all(j.once_each and j.never_sent == 0 for j in jobs)
    ok = ok and all(j.repeated == 0 for j in jobs if j.name.endswith(("SIGTERM at a third",)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

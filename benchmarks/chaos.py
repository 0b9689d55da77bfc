"""The chaos run: a fleet under load while its parts are killed and stopped at random.

    PYTHONPATH=src .venv/bin/python benchmarks/chaos.py [--minutes 3] [--servers 3]
        [--sims 0] [--interval 30] [--load 1.2] [--seed 1] [--json report.json]

Real llama-servers (the bundled model, each with its agent attached by
``--local-llamacpp-addr``) and optionally simulated ones (``corral sim``), every
agent reporting to both balancers of an HA pair, HAProxy in front of the pair
(``retry-on conn-failure empty-response``, ``option redispatch``: docs/ha.md).
Closed-loop clients keep ``--load`` times the fleet's slots busy with streamed chat
requests through HAProxy. Every ``--interval`` seconds one part is hit, in turn a
llama-server, an agent and a balancer of the pair, the member chosen at random, with
SIGKILL (restarted on the same port after ``--down`` seconds) or SIGSTOP (SIGCONT
after ``--down`` seconds).

The report counts requests sent, succeeded, failed before the first byte (no
response head, or an error status), and cut mid-stream (the head came, the stream
did not end with ``[DONE]`` or ended with an error event); and for each hit, how
long until capacity was back (every live balancer sees every server ready) from the
part's return and from the hit. At the end, with the load stopped, it checks slot
counters: every balancer's reservations are 0 and, per server, the balancers' free
slots add up to its slots (no drift). The goal: no request lost that had not started.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corral.llamacpp import bundled_model, llama_server_command, llama_server_path
from corral.llamacpp.process import free_port, spawn, terminate

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
PROMPT = "Tell me a story about a cat."


# ------------------------------------------------------------------ processes
class Part:
    """One process of the fleet that can be killed, stopped and restarted in place."""

    def __init__(self, kind: str, name: str, command: list[str], logs: Path) -> None:
        self.kind, self.name, self.command = kind, name, command
        self.log_path = logs / f"{kind}-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = spawn(self.command, stdout=log, stderr=subprocess.STDOUT)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        if sig == signal.SIGKILL:
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
            terminate(self.process, timeout=5)


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class ChaosFleet:
    """The parts, by kind: servers (real and simulated), agents, balancers, HAProxy."""

    logs: Path
    slots: int
    servers: dict[str, Part] = field(default_factory=dict)
    server_ports: dict[str, int] = field(default_factory=dict)
    agents: dict[str, Part] = field(default_factory=dict)
    balancers: dict[str, Part] = field(default_factory=dict)
    balancer_ports: dict[str, tuple[int, int]] = field(default_factory=dict)
    front: int = 0
    haproxy: Part | None = None

    @property
    def total_slots(self) -> int:
        return self.slots * len(self.servers)

    def start(self, real: int, sims: int) -> None:
        for name in ("b1", "b2"):
            inference, management = free_port(), free_port()
            self.balancer_ports[name] = (inference, management)
            self.balancers[name] = Part("balancer", name, self._balancer(name), self.logs)
        for name in self.balancers:
            wait_for(lambda n=name: self.balancer_up(n), 30, f"balancer {name}")
        names = [f"llama{i}" for i in range(real)] + [f"sim{i}" for i in range(sims)]
        for name in names:
            self.server_ports[name] = free_port()
            self.servers[name] = Part("server", name, self._server(name), self.logs)
        for name in names:
            wait_for(lambda n=name: self.server_up(n), 120, f"server {name}")
            self.agents[name] = Part("agent", name, self._agent(name), self.logs)
        wait_for(self.full, 60, "every server ready on both balancers")
        self.front = free_port()
        config = self.logs / "haproxy.cfg"
        config.write_text(haproxy_config(self.front, [p[0] for p in self.balancer_ports.values()]))
        self.haproxy = Part("front", "haproxy", [HAPROXY, "-db", "-f", str(config)], self.logs)
        wait_for(lambda: stream(self.front, 2).outcome == "ok", 20, "HAProxy")

    def _balancer(self, name: str) -> list[str]:
        inference, management = self.balancer_ports[name]
        return [
            sys.executable, "-m", "corral", "balancer",
            "--inference-addr", f"127.0.0.1:{inference}",
            "--management-addr", f"127.0.0.1:{management}",
            "--state-file", str(self.logs / f"{name}-state.json"),
        ]  # fmt: skip

    def _server(self, name: str) -> list[str]:
        port = self.server_ports[name]
        if name.startswith("sim"):
            return [
                sys.executable, "-m", "corral", "sim", "--addr", f"127.0.0.1:{port}",
                "--slots", str(self.slots), "--name", name,
                "--model", bundled_model().name.removesuffix(".gguf"),
            ]  # fmt: skip
        return llama_server_command(
            llama_server_path(), bundled_model(), port=port, slots=self.slots, ctx_size=1024,
            threads=1,
        )  # fmt: skip

    def _agent(self, name: str) -> list[str]:
        command = [
            sys.executable, "-m", "corral", "agent",
            "--local-llamacpp-addr", f"127.0.0.1:{self.server_ports[name]}",
            "--name", name, "--poll-interval", "0.2", "--read-timeout", "1",
        ]  # fmt: skip
        for _, management in self.balancer_ports.values():
            command += ["--management-addr", f"127.0.0.1:{management}"]
        return command

    def server_up(self, name: str) -> bool:
        url = f"http://127.0.0.1:{self.server_ports[name]}/health"
        return bool(get_json(url, 1).get("status") == "ok")

    def balancer_up(self, name: str) -> bool:
        return bool(get_json(f"http://127.0.0.1:{self.balancer_ports[name][1]}/health", 1))

    def listing(self, name: str) -> dict[str, Any]:
        """A balancer's ``/api/v1/agents``."""
        url = f"http://127.0.0.1:{self.balancer_ports[name][1]}/api/v1/agents"
        return get_json(url, 1)  # type: ignore[no-any-return]

    def ready_on(self, name: str) -> int:
        return sum(a["state"] == "ready" for a in self.listing(name)["agents"])

    def full(self) -> bool:
        """Every balancer sees every server ready, with the slots shared between them."""
        for name in self.balancers:
            agents = self.listing(name)["agents"]
            ready = [a for a in agents if a["state"] == "ready"]
            if len(ready) < len(self.servers):
                return False
            if any(a["slots_share"] != self.slots // len(self.balancers) for a in ready):
                return False
        return True

    def restart(self, part: Part) -> None:
        part.start()
        if part.kind == "server":
            wait_for(lambda: self.server_up(part.name), 60, f"server {part.name}")
        elif part.kind == "balancer":
            wait_for(lambda: self.balancer_up(part.name), 30, f"balancer {part.name}")

    def stop(self) -> None:
        for part in [self.haproxy, *self.agents.values(), *self.servers.values()]:
            if part is not None:
                part.stop()
        for part in self.balancers.values():
            part.stop()


def haproxy_config(front: int, balancers: list[int]) -> str:
    """HAProxy in front of the pair: a request that got no byte back is retried on
    the other balancer (a dead one refuses the connection or closes it empty)."""
    servers = "\n".join(
        f"  server b{i} 127.0.0.1:{port} check inter 200ms fall 1 rise 2"
        for i, port in enumerate(balancers)
    )
    return f"""\
global
  maxconn 1024
defaults
  mode http
  timeout connect 1s
  timeout client 120s
  timeout server 120s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response
  option http-buffer-request
frontend inference
  bind 127.0.0.1:{front}
  default_backend balancers
backend balancers
  balance leastconn
{servers}
"""


# ------------------------------------------------------------------ the load
@dataclass
class Result:
    outcome: str  # ok | before_first_byte | cut
    status: int
    detail: str = ""


def stream(port: int, max_tokens: int) -> Result:
    """One streamed chat request: ``ok``, ``before_first_byte`` (no head, or an error
    status) or ``cut`` (the head came, the stream did not end with ``[DONE]``)."""
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens,
            "stream": True,
        }
    )
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        try:
            connection.request(
                "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
        except OSError as exc:
            return Result("before_first_byte", 0, type(exc).__name__)
        if response.status != 200:
            detail = response.read()[:200].decode(errors="replace")
            return Result("before_first_byte", response.status, detail)
        try:
            text = response.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            return Result("cut", 200, type(exc).__name__)
        if '"error"' in text:
            return Result("cut", 200, text[text.index('"error"') :][:200])
        if "data: [DONE]" not in text:
            return Result("cut", 200, "no [DONE]")
        return Result("ok", 200)
    finally:
        connection.close()


class Load:
    """``clients`` closed-loop clients through ``port`` until stopped."""

    def __init__(self, port: int, clients: int, max_tokens: int) -> None:
        self.port, self.max_tokens = port, max_tokens
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            result = stream(self.port, self.max_tokens)
            with self._lock:
                self.results.append(result)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)


# ------------------------------------------------------------------ the hits
@dataclass
class Hit:
    at_s: float
    kind: str
    name: str
    signal: str
    down_s: float
    back_after_return_s: float | None = None
    back_after_hit_s: float | None = None


def hit(fleet: ChaosFleet, kind: str, rng: random.Random, down: float, started: float) -> Hit:
    """Kill or stop one part of ``kind``, bring it back after ``down`` seconds, and
    time how long until every balancer again sees every server ready."""
    parts = {"server": fleet.servers, "agent": fleet.agents, "balancer": fleet.balancers}[kind]
    name = rng.choice(sorted(parts))
    part = parts[name]
    sig = rng.choice([signal.SIGKILL, signal.SIGSTOP])
    hit_at = time.monotonic()
    part.signal(sig)
    time.sleep(down)
    if sig == signal.SIGKILL:
        fleet.restart(part)
    else:
        part.signal(signal.SIGCONT)
    returned = time.monotonic()
    record = Hit(round(hit_at - started, 1), kind, name, sig.name, down)
    with contextlib.suppress(RuntimeError):
        wait_for(fleet.full, 30, "capacity back")
        now = time.monotonic()
        record.back_after_return_s = round(now - returned, 2)
        record.back_after_hit_s = round(now - hit_at, 2)
    return record


def drift(fleet: ChaosFleet, settle: float = 15.0) -> dict[str, Any]:
    """Slot counters once the load stopped: reservations left and, per server, the
    balancers' free slots against its slots (they add up when nothing drifted)."""
    found: dict[str, Any] = {}

    def check() -> bool:
        listings = {name: fleet.listing(name) for name in fleet.balancers}
        reserved = {
            b: sum(a["reserved"] for a in listing["agents"]) for b, listing in listings.items()
        }
        free: Counter[str] = Counter()
        total: dict[str, int] = {}
        for listing in listings.values():
            for a in listing["agents"]:
                free[a["name"]] += a["slots_free"]
                total[a["name"]] = a["slots_total"]
        found.update(
            reserved=reserved,
            slots_idle={b: listing["slots_idle"] for b, listing in listings.items()},
            slots_total=sum(total.values()),
            short={n: total[n] - free[n] for n in total if free[n] != total[n]},
        )
        return (
            not any(reserved.values()) and not found["short"] and len(total) == len(fleet.servers)
        )

    with contextlib.suppress(RuntimeError):
        wait_for(check, settle, "slot counters settled")
    found["drift"] = bool(any(found["reserved"].values()) or found["short"])
    return found


# ------------------------------------------------------------------ the run
def run(
    *,
    seconds: float,
    servers: int = 3,
    sims: int = 0,
    slots: int = 2,
    interval: float = 30.0,
    down: float = 3.0,
    load: float = 1.2,
    max_tokens: int = 32,
    seed: int = 1,
    logs: Path | None = None,
) -> dict[str, Any]:
    """Run the chaos for ``seconds`` and return the report (see the module's doc)."""
    rng = random.Random(seed)
    logs = logs or Path(tempfile.mkdtemp(prefix="corral-chaos-"))
    fleet = ChaosFleet(logs=logs, slots=slots)
    hits: list[Hit] = []
    try:
        fleet.start(servers, sims)
        clients = math.ceil(load * fleet.total_slots)
        traffic = Load(fleet.front, clients, max_tokens)
        started = time.monotonic()
        traffic.start()
        kinds = ["server", "agent", "balancer"]
        while (due := interval * (len(hits) + 1)) + down <= seconds:
            time.sleep(max(0.0, due - (time.monotonic() - started)))
            hits.append(hit(fleet, kinds[len(hits) % 3], rng, down, started))
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        traffic.stop()
        elapsed = time.monotonic() - started
        wait_for(fleet.full, 30, "every server ready at the end")
        counters = drift(fleet)
    finally:
        fleet.stop()
    outcomes = Counter(r.outcome for r in traffic.results)
    return {
        "seconds": round(elapsed, 1),
        "servers": servers,
        "sims": sims,
        "slots": fleet.total_slots,
        "clients": clients,
        "sent": len(traffic.results),
        "succeeded": outcomes["ok"],
        "failed_before_first_byte": outcomes["before_first_byte"],
        "cut_mid_stream": outcomes["cut"],
        "failures": Counter(
            f"{r.outcome} {r.status} {r.detail[:80]}" for r in traffic.results if r.outcome != "ok"
        ).most_common(10),
        "hits": [asdict(h) for h in hits],
        "counters": counters,
        "logs": str(logs),
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as the table docs/reliability.md shows."""
    lines = [
        f"{report['servers']} llama-servers + {report['sims']} simulated, "
        f"{report['slots']} slots, {report['clients']} clients, {report['seconds']} s:",
        "",
        "| sent | succeeded | failed before the first byte | cut mid-stream |",
        "|---:|---:|---:|---:|",
        f"| {report['sent']} | {report['succeeded']} | {report['failed_before_first_byte']} "
        f"| {report['cut_mid_stream']} |",
        "",
        "| at (s) | part | signal | down (s) | capacity back after its return (s) "
        "| after the hit (s) |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for h in report["hits"]:
        lines.append(
            f"| {h['at_s']} | {h['kind']} {h['name']} | {h['signal']} | {h['down_s']} "
            f"| {h['back_after_return_s']} | {h['back_after_hit_s']} |"
        )
    c = report["counters"]
    lines += [
        "",
        f"Slot counters at the end: reservations {c.get('reserved')}, idle slots per "
        f"balancer {c.get('slots_idle')} of {c.get('slots_total')} in all, "
        f"drift: {'yes ' + str(c.get('short')) if c.get('drift') else 'none'}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--servers", type=int, default=3, help="real llama-servers")
    parser.add_argument("--sims", type=int, default=0, help="simulated servers (corral sim)")
    parser.add_argument("--slots", type=int, default=2, help="slots per server")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between hits")
    parser.add_argument("--down", type=float, default=3.0, help="seconds a hit part stays down")
    parser.add_argument("--load", type=float, default=1.2, help="clients per slot")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    report = run(
        seconds=args.minutes * 60, servers=args.servers, sims=args.sims, slots=args.slots,
        interval=args.interval, down=args.down, load=args.load, max_tokens=args.max_tokens,
        seed=args.seed,
    )  # fmt: skip
    print(markdown(report))
    if report["failures"]:
        print("\nfailures:", *report["failures"], sep="\n  ")
    print(f"\nlogs: {report['logs']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    lost = report["failed_before_first_byte"]
    return 1 if lost or report["counters"]["drift"] else 0


if __name__ == "__main__":
    sys.exit(main())

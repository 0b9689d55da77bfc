"""Which reads of a llama-server hide a client that gave up (and at which rates)?

    PYTHONPATH=src .venv/bin/python benchmarks/agent_reads.py [--quick]

A client sends a long non-streamed ``POST /completion`` (``n_predict`` far beyond what
can finish) and closes its socket after 1.5 s. A bare llama-server notices within about
a second and cancels the task. Meanwhile a reader, standing in for a monitoring agent,
reads one endpoint at a fixed rate on a kept-alive connection. For each endpoint and
rate this prints:

- ``cancel_s``: seconds from the close to the server's ``cancel task`` log line (its
  own record of noticing), or ``-`` if it did not notice within the wait;
- ``free@2s``: whether ``/slots``, read once 2 s after the close, shows the slot free.

Rows for the schedule the agent uses now ("after-gap": the next read starts a fixed
time after the previous answer arrived) and for a second client streaming on another
slot (no reader) are added at the end. The figures and the cause are in
docs/llamacpp.md ("Cancellation").
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from corral.llamacpp import bundled_model, llama_server_command, llama_server_path
from corral.llamacpp.process import free_port, spawn, terminate

CLOSE_AFTER = 1.5  # seconds the client waits before giving up (half way between two
# of the server's 1 s checks, so a bare server notices in about 0.5 s)
CHECK_AFTER = 2.0  # seconds after the close when /slots must show the slot free
BODY = json.dumps({"prompt": "Once upon a time", "n_predict": 100000}).encode()


class Server:
    """A llama-server whose log lines are timestamped as they arrive."""

    def __init__(self, slots: int) -> None:
        self.port = free_port()
        command = llama_server_command(
            llama_server_path(),
            bundled_model(),
            port=self.port,
            slots=slots,
            ctx_size=8192,
            threads=1,
            extra=("--metrics",),
        )
        self.process = spawn(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read_log, daemon=True).start()
        deadline = time.monotonic() + 120
        while self.get("/health")[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit("llama-server did not start:\n" + self.log_tail())
            time.sleep(0.2)

    def _read_log(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._lock:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def log_tail(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines[-20:])

    def first_line_after(self, pattern: str, since: float) -> float | None:
        with self._lock:
            for at, line in self.lines:
                if at >= since and re.search(pattern, line):
                    return at
        return None

    def get(self, path: str) -> tuple[int, Any]:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn.request("GET", path)
            response = conn.getresponse()
            data = response.read()
            conn.close()
        except OSError:
            return 0, None
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data

    def busy(self) -> int:
        status, slots = self.get("/slots")
        assert status == 200, slots
        return sum(1 for s in slots if s["is_processing"])

    def stop(self) -> None:
        terminate(self.process, timeout=5)


class Reader:
    """Reads ``path`` on one kept-alive connection until stopped.

    ``wait(started, ended)`` gives the seconds to sleep before the next read."""

    def __init__(self, port: int, path: str, wait: Callable[[float, float], float]) -> None:
        self.port, self.path, self.wait = port, path, wait
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn.request("GET", self.path)
                conn.getresponse().read()
                self.reads += 1
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self._stop.wait(max(0.0, self.wait(started, time.monotonic())))
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def every(interval: float) -> Callable[[float, float], float]:
    """Reads start every ``interval`` seconds (the old agent's schedule)."""
    return lambda started, ended: interval - (ended - started)


def after_gap(gap: float) -> Callable[[float, float], float]:
    """The next read starts ``gap`` seconds after the previous answer arrived."""
    return lambda started, ended: gap


def streamer(port: int, stop: threading.Event) -> None:
    """A client streaming a long generation on another slot until ``stop``."""
    body = json.dumps({"prompt": "Once upon a time", "n_predict": 100000, "stream": True})
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
        )
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                if not sock.recv(65536):
                    return
            except TimeoutError:
                pass


def trial(server: Server, reader: Reader | None) -> tuple[float | None, bool]:
    """One abandoned request; ``(seconds until the server cancelled it, free at 2 s)``."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    )
    time.sleep(CLOSE_AFTER)
    closed = time.monotonic()
    sock.close()
    time.sleep(CHECK_AFTER)
    free = server.busy() == 0
    if reader is not None:
        reader.stop()
    cancelled = server.first_line_after(r"cancel task", closed)
    # leave the server idle for the next trial (with no reader it notices at once)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1.5)
        if server.busy() == 0:
            break
    else:
        raise SystemExit("the abandoned request never ended:\n" + server.log_tail())
    return (None if cancelled is None else cancelled - closed), free


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer endpoints and rates")
    args = parser.parse_args()
    paths = ["/health", "/slots"] if args.quick else ["/health", "/props", "/v1/models",
                                                       "/slots", "/metrics"]  # fmt: skip
    rates = [0.5] if args.quick else [0.1, 0.5, 1.0, 2.0]

    server = Server(slots=1)
    rows: list[tuple[str, str, float | None, bool, int]] = []
    try:
        cancel, free = trial(server, None)
        rows.append(("(no reads)", "", cancel, free, 0))
        for path in paths:
            for rate in rates:
                reader = Reader(server.port, path, every(rate))
                time.sleep(0.3)
                cancel, free = trial(server, reader)
                rows.append((path, f"every {rate:g} s", cancel, free, reader.reads))
                print(_row(*rows[-1]), flush=True)
        for gap in (1.1, 1.25):
            reader = Reader(server.port, "/slots", after_gap(gap))
            time.sleep(0.3)
            cancel, free = trial(server, reader)
            rows.append(("/slots", f"{gap:g} s after answer", cancel, free, reader.reads))
            print(_row(*rows[-1]), flush=True)
    finally:
        server.stop()

    # llama.cpp's own limit: another client's stream on a second slot, no reader
    server = Server(slots=2)
    try:
        stop = threading.Event()
        thread = threading.Thread(target=streamer, args=(server.port, stop), daemon=True)
        thread.start()
        time.sleep(0.5)
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(
            b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
        time.sleep(CLOSE_AFTER)
        closed = time.monotonic()
        sock.close()
        time.sleep(CHECK_AFTER)
        busy = server.busy()
        cancelled = server.first_line_after(r"cancel task", closed)
        stop.set()
        thread.join()
        rows.append(
            (
                "(no reads, a stream on slot 2)",
                "",
                None if cancelled is None else cancelled - closed,
                busy <= 1,
                0,
            )
        )
    finally:
        server.stop()

    print()
    print(f"{'read':<32} {'rate':<22} {'cancel_s':>8} {'free@2s':>8} {'reads':>6}")
    for row in rows:
        print(_row(*row))
    return 0


def _row(path: str, rate: str, cancel: float | None, free: bool, reads: int) -> str:
    shown = "-" if cancel is None else f"{cancel:.2f}"
    return f"{path:<32} {rate:<22} {shown:>8} {'yes' if free else 'NO':>8} {reads:>6}"


if __name__ == "__main__":
    sys.exit(main())

"""``GET /metrics`` on the inference listener: llama.cpp's own Prometheus metrics
(``llamacpp:*``), summed over the fleet, so what scrapes a llama-server can scrape a
balancer (and a balancer of balancers).

How the numbers get here: the balancer reads each ready server's ``/metrics`` when
it is scraped itself (:func:`scrape`), in parallel, each read bounded by a timeout.
The alternative, agents reading ``/metrics`` and sending the numbers in their
reports, would change the agent protocol, read servers whether anyone scrapes or
not, and report numbers as old as the agent's last read; reading on scrape reads the
servers only as often as the operator's scraper asks (its interval, often 15-60 s),
and the numbers are current. A server's ``/metrics`` needs ``--metrics``.

How the numbers are combined (:func:`combine`), per metric of llama-server:

=======================================  ================================================
``*_total`` counters                     sum (tokens, seconds, decode calls of the fleet)
``requests_processing``, ``_deferred``   sum (gauges of the fleet)
``prompt_tokens_seconds``,               sum: each server's average throughput, so the
``predicted_tokens_seconds``             fleet's when its servers are all busy
``n_busy_slots_per_decode``              mean over the servers (an average per server)
``n_tokens_max``                         max (the largest sequence any server saw)
anything else                            sum
=======================================  ================================================

Answers: 200 with the combined metrics when at least one server answered; a comment
line says how many did not. 501 with llama-server's answer when every ready server
answered 501 (none runs ``--metrics``); 503 when no server is ready.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from corral.balancer.upstream import UpstreamBroken, UpstreamError, UpstreamPool
from corral.core.fleet import Backend

_MAX = frozenset({"llamacpp:n_tokens_max"})
_MEAN = frozenset({"llamacpp:n_busy_slots_per_decode"})
_MAX_BODY = 1024 * 1024
_NOT_READY = (
    b'{"error":{"code":503,"message":"Corral: no server is ready","type":"unavailable_error"}}'
)


@dataclass(slots=True)
class Family:
    """One metric: its help, type and samples (``name{labels}`` -> values, one per server)."""

    name: str
    help: str = ""
    type: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)


def parse(text: str, families: dict[str, Family] | None = None) -> dict[str, Family]:
    """Add the samples of one Prometheus text exposition to ``families`` (by name, in
    the order first seen). Lines that are not samples, help or type are skipped."""
    families = {} if families is None else families
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = families.setdefault(parts[2], Family(parts[2]))
                text_ = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    family.help = text_
                else:
                    family.type = text_
            continue
        if "}" in line:  # name{labels} value [timestamp]
            end = line.rindex("}") + 1
            key, rest = line[:end], line[end:].split()
        else:  # name value [timestamp]
            key, *rest = line.split()
        try:
            value = float(rest[0])
        except (IndexError, ValueError):
            continue
        name = key.split("{", 1)[0]
        families.setdefault(name, Family(name)).samples.setdefault(key, []).append(value)
    return families


def combine(families: dict[str, Family]) -> str:
    """The Prometheus text of the fleet: each sample combined over the servers as the
    module docstring says."""
    out: list[str] = []
    for family in families.values():
        if not family.samples:
            continue
        if family.help:
            out.append(f"# HELP {family.name} {family.help}")
        if family.type:
            out.append(f"# TYPE {family.name} {family.type}")
        for key, values in family.samples.items():
            out.append(f"{key} {_number(_combined(family.name, values))}")
    return "\n".join(out) + "\n"


def _combined(name: str, values: Sequence[float]) -> float:
    if name in _MAX:
        return max(values)
    if name in _MEAN:
        return sum(values) / len(values)
    return sum(values)


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str


async def scrape(pool: UpstreamPool, backends: Iterable[Backend], limit: float = 5.0) -> Answer:
    """Read ``/metrics`` of these (ready) servers at once and combine them."""
    backends = list(backends)
    if not backends:
        return Answer(503, _NOT_READY, "application/json")
    results = await asyncio.gather(*(_read(pool, backend, limit) for backend in backends))
    families: dict[str, Family] = {}
    answered = 0
    refusal: bytes | None = None
    for status, body in results:
        if status == 200:
            parse(body.decode("utf-8", "replace"), families)
            answered += 1
        elif status == 501 and refusal is None:
            refusal = body
    if not answered and refusal is not None and all(s == 501 for s, _ in results):
        return Answer(501, refusal, "application/json; charset=utf-8")
    text = combine(families)
    if answered < len(backends):
        text += f"# corral: {len(backends) - answered} of {len(backends)} servers did not answer\n"
    return Answer(200, text.encode(), "text/plain; version=0.0.4")


async def _read(pool: UpstreamPool, backend: Backend, limit: float) -> tuple[int, bytes]:
    """``(status, body)`` of one server's ``/metrics``; ``(0, reason)`` if it failed."""
    headers = b"Accept: text/plain\r\n"
    if backend.api_key:
        headers += (
            b"Authorization: Bearer " + backend.api_key.encode("latin-1", "replace") + b"\r\n"
        )
    try:
        async with asyncio.timeout(limit):
            response = await pool.request(backend.address, "GET", b"/metrics", headers, b"")
            try:
                body = await response.read()
            finally:
                response.close()
    except (UpstreamError, UpstreamBroken, TimeoutError) as exc:
        return 0, str(exc).encode()
    return response.status, body[:_MAX_BODY]

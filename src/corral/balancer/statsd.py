"""StatsD: the fleet gauges and request counters, sent over UDP every interval.

The names follow Paddler's, so dashboards and autoscalers built for it read Corral:
``<prefix>.slots_idle``, ``<prefix>.slots_processing`` and
``<prefix>.requests_buffered`` (gauges), ``<prefix>.requests`` and
``<prefix>.requests_rejected`` (counters: the change since the last send).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from corral.addr import Addr
from corral.core.fleet import Fleet
from corral.core.queueing import Queue

log = logging.getLogger("corral.statsd")


@dataclass(frozen=True, slots=True)
class Sample:
    slots_idle: int
    slots_processing: int
    requests_buffered: int
    requests: int  # totals since start
    requests_rejected: int


def lines(prefix: str, now: Sample, last: Sample | None) -> list[str]:
    """StatsD lines for one send (pure)."""
    requests = now.requests - (last.requests if last else 0)
    rejected = now.requests_rejected - (last.requests_rejected if last else 0)
    return [
        f"{prefix}.slots_idle:{now.slots_idle}|g",
        f"{prefix}.slots_processing:{now.slots_processing}|g",
        f"{prefix}.requests_buffered:{now.requests_buffered}|g",
        f"{prefix}.requests:{requests}|c",
        f"{prefix}.requests_rejected:{rejected}|c",
    ]


class Counts:
    """Plain running totals the proxy bumps (cheaper than reading Prometheus back)."""

    __slots__ = ("rejected", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.rejected = 0


class StatsdReporter:
    def __init__(
        self,
        addr: Addr,
        prefix: str,
        interval: float,
        fleet: Fleet,
        buffer: Queue,
        counts: Counts,
    ) -> None:
        self.addr = addr
        self.prefix = prefix.rstrip(".")
        self.interval = interval
        self.fleet = fleet
        self.buffer = buffer
        self.counts = counts
        self._last: Sample | None = None

    def sample(self) -> Sample:
        idle, processing = self.fleet.totals()
        return Sample(
            idle, processing, len(self.buffer), self.counts.requests, self.counts.rejected
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(self.addr.host, self.addr.port)
        )
        try:
            while True:
                await asyncio.sleep(self.interval)
                now = self.sample()
                payload = "\n".join(lines(self.prefix, now, self._last)).encode()
                self._last = now
                try:
                    transport.sendto(payload)
                except OSError as exc:  # a StatsD that is down must not stop us
                    log.warning("statsd %s: %s", self.addr, exc)
        finally:
            transport.close()

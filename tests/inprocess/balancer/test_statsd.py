"""StatsD over real UDP: the exact lines a StatsD server receives."""

from __future__ import annotations

import asyncio

from support.harness import Harness, url

from corral.addr import Addr


class Listener(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.packets.put_nowait(data)


async def test_statsd_gauges_and_counters(harness: Harness):
    loop = asyncio.get_running_loop()
    transport, listener = await loop.create_datagram_endpoint(Listener, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        balancer = await harness.balancer(
            statsd_addr=Addr("127.0.0.1", port), statsd_prefix="fleet", statsd_interval=0.2
        )
        _, sim = await harness.sim(name="s", slots=3)
        await harness.agent(sim, balancer, name="s")
        for _ in range(2):
            async with harness.http.post(url(balancer, "/completion"), json={"prompt": "x"}) as r:
                assert r.status == 200
        # counters are deltas: over the sends, they add up to the two requests
        counted = 0
        for _ in range(50):
            packet = (await asyncio.wait_for(listener.packets.get(), 5)).decode()
            lines = packet.split("\n")
            assert lines[:3] == [
                "fleet.slots_idle:3|g",
                "fleet.slots_processing:0|g",
                "fleet.requests_buffered:0|g",
            ] or lines[0].startswith("fleet.slots_idle:"), lines
            assert lines[3].startswith("fleet.requests:") and lines[3].endswith("|c")
            assert lines[4] == "fleet.requests_rejected:0|c"
            counted += int(lines[3].split(":")[1].split("|")[0])
            if counted == 2:
                break
        assert counted == 2
        packet = (await asyncio.wait_for(listener.packets.get(), 5)).decode()
        assert packet.split("\n") == [
            "fleet.slots_idle:3|g",
            "fleet.slots_processing:0|g",
            "fleet.requests_buffered:0|g",
            "fleet.requests:0|c",
            "fleet.requests_rejected:0|c",
        ]
    finally:
        transport.close()

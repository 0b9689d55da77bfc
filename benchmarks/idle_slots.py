"""Were slots idle while requests waited? Replays a balancer's request log.

    python benchmarks/idle_slots.py BALANCER_LOG [--slots N]

Reads Corral's access log lines (``corral.access``: the end time, ``wait=``, the time
spent in the buffer, and ``total=``, from arrival to the end) and rebuilds, for the
whole run, how many of the balancer's requests were in flight and how many waited.
Prints the run's span, the mean in flight and waiting, and the slot-seconds a slot
was free (fewer than ``--slots`` in flight) while at least one request waited: near 0
for a balancer that keeps every slot busy under load; with prefix routing, the time
requests chose to wait for the busy server holding their prompt.

Only the log's requests are counted (not load from elsewhere), and times are as the
balancer logged them (milliseconds). Exit status 2 for a log with no request line.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Iterable, Sequence

FIELD = re.compile(r"\b(wait|total)=([\d.]+)s\b")


def spans(lines: Iterable[str]) -> list[tuple[float, float, float]]:
    """``(arrived, dispatched, ended)`` in seconds for each access line."""
    out = []
    for line in lines:
        if "corral.access" not in line:
            continue
        fields = dict(FIELD.findall(line))
        if "wait" not in fields or "total" not in fields:
            continue
        end = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        arrived = end - float(fields["total"])
        out.append((arrived, arrived + float(fields["wait"]), end))
    return out


def idle_while_waiting(
    requests: Sequence[tuple[float, float, float]], slots: int
) -> dict[str, float]:
    """An event sweep over the requests: span (s), mean in flight and waiting, and
    the slot-seconds with a free slot and a waiting request."""
    deltas = []  # (time, change in flight, change waiting)
    for arrived, dispatched, ended in requests:
        deltas += [(arrived, 0, 1), (dispatched, 1, -1), (ended, -1, 0)]
    deltas.sort()
    start, end = deltas[0][0], deltas[-1][0]
    inflight = waiting = 0
    idle = busy_area = wait_area = 0.0
    last = start
    for t, d_in, d_wait in deltas:
        dt = t - last
        busy_area += inflight * dt
        wait_area += waiting * dt
        if waiting > 0 and inflight < slots:
            idle += (slots - inflight) * dt
        inflight += d_in
        waiting += d_wait
        last = t
    span = max(end - start, 1e-9)
    return {
        "requests": len(requests),
        "span_s": end - start,
        "mean_in_flight": busy_area / span,
        "mean_waiting": wait_area / span,
        "idle_slot_s_while_waiting": idle,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="a balancer's log (its access lines at info level)")
    p.add_argument("--slots", type=int, default=4, help="the fleet's slots (default 4)")
    args = p.parse_args(argv)
    if args.slots < 1:
        p.error("--slots must be at least 1")
    try:
        with open(args.log, encoding="utf-8", errors="replace") as f:
            requests = spans(f)
    except OSError as exc:
        p.error(f"cannot read {args.log}: {exc.strerror}")
    if not requests:
        print(f"{args.log}: no corral.access line with wait= and total=", file=sys.stderr)
        return 2
    r = idle_while_waiting(requests, args.slots)
    print(
        f"{r['requests']} requests over {r['span_s']:.0f} s: {r['mean_in_flight']:.2f} in "
        f"flight and {r['mean_waiting']:.2f} waiting on average; a slot was free while a "
        f"request waited for {r['idle_slot_s_while_waiting']:.2f} slot-seconds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

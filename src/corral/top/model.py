"""What ``corral top`` shows, decided without I/O.

Theory of operation
-------------------
Rule 1: everything the dashboard decides lives here; :mod:`corral.top.app` only
reads the balancer and puts these values on the screen.

The balancer's management listener sends the fleet as Server-Sent Events
(:class:`SseDecoder` cuts the byte stream into events). Each event's JSON becomes one
:class:`Snapshot` of :class:`AgentRow` values (:func:`parse_snapshot`). The JSON comes
from another process, maybe another version, so parsing never raises: a missing or
odd field gets a default, text is cleaned of control characters, and every row gets
a unique key even when ids are missing or repeated.

Rates come from two scrapes of ``/metrics`` (:func:`parse_counters`,
:func:`compute_rates`): requests answered and tokens generated, per second, over the
time between the scrapes, for the fleet and for each agent. Tokens are counted as
streams are relayed, so tokens/s follows generation as it happens. A counter that went
down (a restarted balancer) counts from zero, as Prometheus's ``rate()`` does.
:class:`History` keeps each agent's last busy slots and tokens/s for the detail screen.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

NAME_WIDTH = 14
"""Cells of the name column (80 columns hold the whole table)."""
MODEL_WIDTH = 12
STATE_WIDTH = 9
SLOTS_WIDTH = 11
ISSUES_WIDTH = 13
SEEN_WIDTH = 5
BAR_WIDTH = 5
DETAIL_TEXT_LIMIT = 300
"""Longest text the detail screen shows for one field (names can be huge)."""

REQUESTS_COUNTER = "corral_requests_total"
TOKENS_COUNTER = "corral_generated_tokens_total"
AGENT_TOKENS_COUNTER = "corral_agent_generated_tokens_total"
HISTORY = 30
"""Samples of each agent's history (one per scrape: a minute at the default 2 s)."""
SPARKS = "▁▂▃▄▅▆▇█"

NO_AGENTS = (
    "No agents registered. Start one with: corral agent "
    "--management-addr <this balancer> --model bundled"
)
"""What an empty fleet says (the live screen's status line, and ``--once``)."""

SORT_KEYS = ("name", "state", "busy", "free")
"""Sort columns, in the order the ``s`` key cycles through them."""

STATE_RANK = {"error": 0, "unhealthy": 1, "loading": 2, "draining": 3, "ready": 4}
"""Sorting by state puts problems first; unknown states come last."""


# --------------------------------------------------------------------------- text


def clean(value: object, limit: int = DETAIL_TEXT_LIMIT) -> str:
    """``value`` as one line of text: control characters become spaces, then
    :func:`truncate` to ``limit``."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    text = "".join(" " if (ch < " " or "\x7f" <= ch <= "\x9f") else ch for ch in text)
    return truncate(text, limit)


def truncate(text: str, limit: int) -> str:
    """At most ``limit`` characters; a cut text ends with an ellipsis."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def slots_bar(busy: int, total: int, width: int = BAR_WIDTH) -> str:
    """``███░░ 3/5``: busy slots as a bar, then the numbers.

    The bar is rounded to whole cells but never shows a busy slot as idle or the
    reverse: 1 busy of 100 fills one cell, 99 of 100 leaves one empty.
    """
    busy = max(0, busy)
    total = max(0, total)
    if total == 0:
        filled = width if busy else 0
    elif busy >= total:
        filled = width
    else:
        filled = round(width * busy / total)
        filled = min(max(filled, 1 if busy else 0), width - 1)
    return "█" * filled + "░" * (width - filled) + f" {busy}/{total}"


def slots_cell(busy: int, total: int, width: int = SLOTS_WIDTH) -> str:
    """:func:`slots_bar` for the table: without the bar when the numbers need the room,
    so a big server shows ``100/128`` rather than a cut number."""
    bar = slots_bar(busy, total)
    return bar if len(bar) <= width else bar.split(" ", 1)[1]


def format_age(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``5m``, ``3h``, ``2d``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h"
    return f"{seconds // 86400:.0f}d"


def format_rate(value: float | None) -> str:
    """A per-second rate in at most 5 characters; ``-`` when unknown."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}"
    if value < 1000:
        return f"{value:.1f}"
    if value < 1_000_000:
        return f"{value / 1000:.1f}k"
    return f"{value / 1_000_000:.1f}M"


# --------------------------------------------------------------------------- rows


def _int(value: object) -> int:
    """A count from JSON: a whole, non-negative number, else 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, float) and math.isfinite(value):
        return max(0, int(value))
    return 0


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class Issue:
    """A problem an agent reports, in words."""

    code: str
    message: str

    @property
    def text(self) -> str:
        return self.message or self.code or "issue"


@dataclass(frozen=True, slots=True)
class Supervisor:
    """The agent's llama-server process, when the agent runs it."""

    state: str = ""
    restarts: int = 0
    load_time_s: float | None = None
    pid: int | None = None
    last_crash: str = ""
    step: str = ""
    """What a start is doing now: ``copying`` (the model into the cache), ``loading``."""
    copied_bytes: int = 0
    copy_bytes: int | None = None
    copy_time_s: float | None = None

    @property
    def start_text(self) -> str:
        """``copying 16.8/100.7 MB (17%)``, ``loading``, or ``-`` when not starting."""
        if self.step == "copying":
            done = self.copied_bytes / 1e6
            if self.copy_bytes:
                share = 100 * self.copied_bytes / self.copy_bytes
                return f"copying {done:.1f}/{self.copy_bytes / 1e6:.1f} MB ({share:.0f}%)"
            return f"copying {done:.1f} MB"
        return self.step or "-"


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One agent as the dashboard shows it. ``key`` is unique within a snapshot."""

    key: str
    id: str
    name: str
    address: str = ""
    model: str = ""
    state: str = ""
    condition: str = ""
    slots_total: int = 0
    slots_busy: int = 0
    slots_free: int = 0
    slots_processing_reported: int = 0
    reserved: int = 0
    set_aside: bool = False
    issues: tuple[Issue, ...] = ()
    last_seen_ago_s: float | None = None
    registered_ago_s: float | None = None
    supervisor: Supervisor | None = None
    applied_generation: int | None = None
    not_routable: tuple[str, ...] = ()
    """Why the balancer sends it no requests, in words (empty: it does)."""
    runner: str = ""
    """The kind of server (``llamacpp``, ``vllm``...)."""
    apis: tuple[str, ...] = ()
    """The API families its server answers."""

    def __repr__(self) -> str:
        model = f" model={self.model}" if self.model else ""
        return (
            f"<Agent {self.name} {self.state.upper() or '?'} "
            f"slots {self.slots_busy}/{self.slots_total} busy{model}>"
        )

    @property
    def issues_text(self) -> str:
        """The first issue in words, and how many more there are."""
        if not self.issues:
            return ""
        more = len(self.issues) - 1
        return self.issues[0].text + (f" (+{more})" if more else "")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet at one moment, as the balancer streamed it."""

    agents: tuple[AgentRow, ...] = ()
    slots_idle: int = 0
    slots_processing: int = 0
    buffered_requests: int = 0

    def __repr__(self) -> str:
        return (
            f"<Snapshot [Agents: {len(self.agents)}, {self.ready} ready | Slots: "
            f"{self.slots_processing} busy, {self.slots_idle} idle | "
            f"Buffered: {self.buffered_requests}]>"
        )

    @property
    def ready(self) -> int:
        return sum(1 for a in self.agents if a.state == "ready")

    def agent(self, key: str) -> AgentRow | None:
        return next((a for a in self.agents if a.key == key), None)


def _issue(value: object) -> Issue:
    if isinstance(value, Mapping):
        return Issue(clean(value.get("code")), clean(value.get("message")))
    return Issue("", clean(value))


def _supervisor(value: object) -> Supervisor | None:
    if not isinstance(value, Mapping):
        return None
    pid = value.get("pid")
    return Supervisor(
        state=clean(value.get("state")),
        restarts=_int(value.get("restarts")),
        load_time_s=_float(value.get("load_time_s")),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        last_crash=clean(value.get("last_crash")),
        step=clean(value.get("step"), 20),
        copied_bytes=_int(value.get("copied_bytes")),
        copy_bytes=_int(value.get("copy_bytes")) if value.get("copy_bytes") is not None else None,
        copy_time_s=_float(value.get("copy_time_s")),
    )


def parse_agent(value: object, key: str) -> AgentRow:
    """One agent object from the stream; anything missing or odd gets a default."""
    data: Mapping[str, Any] = value if isinstance(value, Mapping) else {}
    issues = data.get("issues")
    reasons = data.get("not_routable")
    apis = data.get("apis")
    generation = data.get("applied_generation")
    total = _int(data.get("slots_total"))
    busy = _int(data.get("slots_busy"))
    free = data.get("slots_free")
    agent_id = clean(data.get("id"))
    return AgentRow(
        key=key,
        id=agent_id,
        name=clean(data.get("name")) or agent_id or "?",
        address=clean(data.get("address")),
        model=clean(data.get("model")),
        state=clean(data.get("state"), 20).lower(),
        condition=clean(data.get("condition"), 40),
        slots_total=total,
        slots_busy=busy,
        slots_free=_int(free) if free is not None else max(0, total - busy),
        slots_processing_reported=_int(data.get("slots_processing_reported")),
        reserved=_int(data.get("reserved")),
        set_aside=bool(data.get("set_aside")),
        issues=tuple(_issue(i) for i in issues) if isinstance(issues, list) else (),
        last_seen_ago_s=_float(data.get("last_seen_ago_s")),
        registered_ago_s=_float(data.get("registered_ago_s")),
        supervisor=_supervisor(data.get("supervisor")),
        applied_generation=_int(generation) if generation is not None else None,
        not_routable=tuple(clean(r) for r in reasons) if isinstance(reasons, list) else (),
        runner=clean(data.get("runner"), 40),
        apis=tuple(clean(a, 40) for a in apis) if isinstance(apis, list) else (),
    )


def parse_snapshot(data: object) -> Snapshot:
    """One ``fleet`` event's JSON as a :class:`Snapshot`. Never raises.

    Row keys are the agents' ids; a missing or repeated id gets ``#<position>``.
    """
    if not isinstance(data, Mapping):
        return Snapshot()
    agents = data.get("agents")
    rows: list[AgentRow] = []
    keys: set[str] = set()
    for index, value in enumerate(agents if isinstance(agents, list) else ()):
        agent_id = value.get("id") if isinstance(value, Mapping) else None
        key = agent_id if isinstance(agent_id, str) and agent_id else f"#{index}"
        while key in keys:
            key = f"{key}#{index}"
        keys.add(key)
        rows.append(parse_agent(value, key))
    return Snapshot(
        agents=tuple(rows),
        slots_idle=_int(data.get("slots_idle")),
        slots_processing=_int(data.get("slots_processing")),
        buffered_requests=_int(data.get("buffered_requests")),
    )


# ------------------------------------------------------------------------ sorting


def next_sort(key: str) -> str:
    """The sort column after ``key`` (the ``s`` key)."""
    try:
        return SORT_KEYS[(SORT_KEYS.index(key) + 1) % len(SORT_KEYS)]
    except ValueError:
        return SORT_KEYS[0]


def sort_rows(rows: Iterable[AgentRow], key: str) -> list[AgentRow]:
    """Rows sorted by ``key`` (one of :data:`SORT_KEYS`), ties by name then id.

    ``state`` puts problems first; ``busy`` and ``free`` put the most slots first.
    """

    def by_name(row: AgentRow) -> tuple[str, str]:
        return (row.name.casefold(), row.key)

    if key == "state":
        return sorted(rows, key=lambda r: (STATE_RANK.get(r.state, 99), r.state, *by_name(r)))
    if key == "busy":
        return sorted(rows, key=lambda r: (-r.slots_busy, *by_name(r)))
    if key == "free":
        return sorted(rows, key=lambda r: (-r.slots_free, *by_name(r)))
    return sorted(rows, key=by_name)


# ------------------------------------------------------------------------- detail


def sparkline(values: Sequence[float], top: float = 0.0) -> str:
    """``▁▃▅█``: one cell per value, scaled to ``top`` (or the largest value if larger)."""
    peak = max([top, *values]) if values else top
    if peak <= 0:
        return SPARKS[0] * len(values)
    last = len(SPARKS) - 1
    return "".join(SPARKS[min(last, max(0, round(last * v / peak)))] for v in values)


class History:
    """Each agent's last :data:`HISTORY` samples of busy slots and tokens/s, by name."""

    def __init__(self, keep: int = HISTORY) -> None:
        self.keep = keep
        self.busy: dict[str, deque[int]] = {}
        self.tokens: dict[str, deque[float]] = {}
        self.cache: Mapping[str, CacheCounts] = {}
        """Each agent's prompt-cache counters at the last scrape (since the balancer started)."""

    def record(self, snapshot: Snapshot | None, rates: Rates | None) -> None:
        """One sample per agent in ``snapshot`` (agents gone are forgotten)."""
        if snapshot is None:
            return
        names = {a.name for a in snapshot.agents}
        for name in list(self.busy):
            if name not in names:
                del self.busy[name], self.tokens[name]
        per_agent = rates.agent_tokens_per_s if rates is not None else {}
        for agent in snapshot.agents:
            busy = self.busy.setdefault(agent.name, deque(maxlen=self.keep))
            tokens = self.tokens.setdefault(agent.name, deque(maxlen=self.keep))
            busy.append(agent.slots_busy)
            tokens.append(per_agent.get(agent.name, 0.0))

    def lines(self, row: AgentRow) -> list[tuple[str, str]]:
        """``(label, value)`` lines for the detail screen: sparklines and the latest."""
        busy = list(self.busy.get(row.name, ()))
        tokens = list(self.tokens.get(row.name, ()))
        cache = ("Cache hits", self.cache.get(row.name, CacheCounts()).text)
        if not busy:
            return [("Busy history", "-"), ("Tokens/s", "-"), cache]
        return [
            (
                "Busy history",
                f"{sparkline(busy, row.slots_total)} peak {max(busy)}/{row.slots_total}",
            ),
            ("Tokens/s", f"{sparkline(tokens)} {format_rate(tokens[-1])} now"),
            cache,
        ]


def detail_fields(row: AgentRow, history: History | None = None) -> list[tuple[str, str]]:
    """Every field of one agent as ``(label, value)`` for the detail screen (with its
    recent busy slots and tokens/s when ``history`` is given)."""
    fields = [
        ("Name", row.name),
        ("ID", row.id or "-"),
        ("Address", row.address or "-"),
        ("Model", row.model or "-"),
        ("Runner", (row.runner or "-") + (f" ({', '.join(row.apis)})" if row.apis else "")),
        ("State", row.state or "-"),
        ("Condition", row.condition or "-"),
        ("Slots", f"{slots_bar(row.slots_busy, row.slots_total)} busy, {row.slots_free} free"),
        *(history.lines(row) if history is not None else ()),
        ("Routable", "no: " + "; ".join(row.not_routable) if row.not_routable else "yes"),
        ("Reported busy", str(row.slots_processing_reported)),
        ("Reserved", str(row.reserved)),
        ("Set aside", "yes" if row.set_aside else "no"),
        ("Last seen", f"{format_age(row.last_seen_ago_s)} ago"),
        ("Registered", f"{format_age(row.registered_ago_s)} ago"),
        ("Generation", "-" if row.applied_generation is None else str(row.applied_generation)),
    ]
    sup = row.supervisor
    if sup is None:
        fields.append(("Supervisor", "none (attached to a running server)"))
    else:
        load = "-" if sup.load_time_s is None else f"{sup.load_time_s:.1f}s"
        copy = "-" if sup.copy_time_s is None else f"{sup.copy_time_s:.1f}s"
        if sup.copy_time_s == 0:
            copy = "none (cached)"
        fields += [
            ("Supervisor", sup.state or "-"),
            ("  start", sup.start_text),
            ("  copy time", copy),
            ("  load time", load),
            ("  restarts", str(sup.restarts)),
            ("  pid", "-" if sup.pid is None else str(sup.pid)),
            ("  last crash", sup.last_crash or "-"),
        ]
    return fields


# ------------------------------------------------------------------------ metrics


@dataclass(frozen=True, slots=True)
class Counters:
    """The balancer's counters at one scrape, ``at`` seconds on the caller's clock."""

    at: float
    requests: float
    tokens: float
    agent_tokens: Mapping[str, float] = dataclasses.field(default_factory=dict)
    cache: CacheCounts = dataclasses.field(default_factory=lambda: CacheCounts())
    """Prompt-cache counters, fleet-wide."""
    agent_cache: Mapping[str, CacheCounts] = dataclasses.field(default_factory=dict)
    demand: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """``corral_model_demand`` per model (what KEDA scales on)."""
    cold_starts: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    """Per model: ``corral_cold_start_seconds`` count and sum."""


@dataclass(frozen=True, slots=True)
class CacheCounts:
    """Prompt tokens reused from the servers' caches (measured, ``timings.cache_n``) and
    predicted by the prefix index, of the prompt tokens of answers with timings."""

    cached: float = 0.0
    predicted: float = 0.0
    timed: float = 0.0

    @property
    def text(self) -> str:
        """``82% (predicted 80%)``; ``82%`` when nothing was predicted (routing other
        than prefix measures, but does not predict); ``-`` before any answer with
        timings."""
        if self.timed <= 0:
            return "-"
        hits, predicted = 100 * self.cached / self.timed, 100 * self.predicted / self.timed
        if self.predicted <= 0:
            return f"{hits:.0f}%"
        return f"{hits:.0f}% (predicted {predicted:.0f}%)"


_CACHE = {
    "corral_cached_prompt_tokens_total": "cached",
    "corral_cached_prompt_tokens_predicted_total": "predicted",
    "corral_timed_prompt_tokens_total": "timed",
}
_AGENT_CACHE = {
    "corral_agent_cached_prompt_tokens_total": "cached",
    "corral_agent_cached_prompt_tokens_predicted_total": "predicted",
    "corral_agent_timed_prompt_tokens_total": "timed",
}


@dataclass(frozen=True, slots=True)
class Rates:
    requests_per_s: float
    tokens_per_s: float
    agent_tokens_per_s: Mapping[str, float] = dataclasses.field(default_factory=dict)


def parse_counters(text: str, at: float) -> Counters | None:
    """Sum ``corral_requests_total`` and ``corral_generated_tokens_total`` over their
    labels; None if ``text`` is not Prometheus text. A counter not yet created
    (nothing counted) is 0."""
    totals = {REQUESTS_COUNTER: 0.0, TOKENS_COUNTER: 0.0}
    agents: dict[str, float] = {}
    cache: dict[str, float] = {}
    agent_cache: dict[str, dict[str, float]] = {}
    demand: dict[str, float] = {}
    starts: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not math.isfinite(sample.value):
                    continue
                name, value = sample.name, sample.value
                if name in totals:
                    totals[name] += value
                elif name == AGENT_TOKENS_COUNTER:
                    agent = clean(sample.labels.get("agent", ""))
                    agents[agent] = agents.get(agent, 0.0) + value
                elif name in _CACHE:
                    cache[_CACHE[name]] = value
                elif name in _AGENT_CACHE:
                    counts = agent_cache.setdefault(clean(sample.labels.get("agent", "")), {})
                    counts[_AGENT_CACHE[name]] = value
                elif name == "corral_model_demand":
                    demand[clean(sample.labels.get("model", ""), 60)] = value
                elif name in ("corral_cold_start_seconds_count", "corral_cold_start_seconds_sum"):
                    pair = starts.setdefault(clean(sample.labels.get("model", ""), 60), [0.0, 0.0])
                    pair[name.endswith("_sum")] = value
    except Exception:  # the parser raises several kinds on bad input
        return None
    return Counters(
        at,
        totals[REQUESTS_COUNTER],
        totals[TOKENS_COUNTER],
        agents,
        CacheCounts(**cache),
        {agent: CacheCounts(**counts) for agent, counts in agent_cache.items()},
        demand,
        {model: (pair[0], pair[1]) for model, pair in starts.items()},
    )


def signals_line(counters: Counters | None) -> str:
    """The third summary line: the fleet's prefix-cache hits (since the balancer
    started), the demand per model and the cold starts.
    ``Cache 82% (predicted 80%)  Demand gemma 2 qwen 0  Cold starts 1, mean 11.4s``."""
    if counters is None:
        return "Cache -  Demand -  Cold starts -"
    demand = " ".join(f"{m} {v:g}" for m, v in sorted(counters.demand.items()))
    count = sum(c for c, _ in counters.cold_starts.values())
    total = sum(s for _, s in counters.cold_starts.values())
    starts = f"{count:.0f}, mean {total / count:.1f}s" if count else "none"
    return f"Cache {counters.cache.text}  Demand {demand or '-'}  Cold starts {starts}"


def compute_rates(before: Counters, after: Counters) -> Rates | None:
    """Per-second rates between two scrapes; None if no time passed between them."""
    elapsed = after.at - before.at
    if not elapsed > 0:
        return None

    def rate(old: float, new: float) -> float:
        return (new - old if new >= old else new) / elapsed

    agents = {
        name: rate(before.agent_tokens.get(name, 0.0), value)
        for name, value in after.agent_tokens.items()
    }
    return Rates(rate(before.requests, after.requests), rate(before.tokens, after.tokens), agents)


def backoff(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Seconds to wait before reconnection ``attempt`` (1, 2, ...): doubling, capped."""
    exponent = max(0, min(attempt - 1, 30))
    return min(cap, base * float(1 << exponent))


# ---------------------------------------------------------------------------- SSE

MAX_EVENT_BYTES = 32 * 1024 * 1024
"""Largest event the decoder buffers (a fleet of thousands of agents fits)."""


class SseError(ValueError):
    """The stream is not Server-Sent Events (or an event is absurdly large)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    data: str


class SseDecoder:
    """Bytes of a ``text/event-stream`` in, complete events out (the WHATWG rules:
    ``event:`` and ``data:`` fields, ``:`` comments, a blank line ends an event)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            raw = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            event = self._line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        if len(self._buffer) + sum(len(d) for d in self._data) > MAX_EVENT_BYTES:
            raise SseError(f"an event is larger than {MAX_EVENT_BYTES} bytes")
        return events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            event = SseEvent(self._event or "message", "\n".join(self._data))
            dispatch = bool(self._data)
            self._event, self._data = "", []
            return event if dispatch else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def summary_lines(snapshot: Snapshot | None, rates: Rates | None, sort_key: str) -> Sequence[str]:
    """The two lines above the table: fleet totals, then rates and the sort column."""
    if snapshot is None:
        fleet = "Agents -  Slots -  Buffered -"
    else:
        fleet = (
            f"Agents {len(snapshot.agents)} ({snapshot.ready} ready)  "
            f"Slots {snapshot.slots_processing} busy / {snapshot.slots_idle} idle  "
            f"Buffered {snapshot.buffered_requests}"
        )
    req = format_rate(rates.requests_per_s if rates else None)
    tok = format_rate(rates.tokens_per_s if rates else None)
    return (fleet, f"{req} req/s  {tok} tok/s  sort: {sort_key}")


PLAIN_COLUMNS = ("NAME", "MODEL", "STATE", "SLOTS", "CACHE", "SEEN", "ISSUES")


def plain_report(snapshot: Snapshot, counters: Counters | None, sort_key: str = "name") -> str:
    """The fleet as plain text, for ``corral top --once`` (a script, a log, a pipe):
    the fleet line, the signals line, then one line per agent in columns (names and
    issues whole, not cut to 80 columns: this is for reading and grep). ``counters``:
    one scrape of ``/metrics`` for the cache columns; None: shown as ``-``. Rates need
    two scrapes, so there are none.

    ``CACHE`` is each agent's prompt tokens reused from its server's cache since the
    balancer started (:class:`CacheCounts`)."""
    fleet = summary_lines(snapshot, None, sort_key)[0]
    lines = [fleet, signals_line(counters), ""]
    if not snapshot.agents:
        lines.append(NO_AGENTS)
        return "\n".join(lines) + "\n"
    cache = counters.agent_cache if counters is not None else {}
    table = [PLAIN_COLUMNS]
    for row in sort_rows(snapshot.agents, sort_key):
        counts = cache.get(row.name)
        table.append(
            (
                row.name,
                row.model or "-",
                row.state or "?",
                f"{row.slots_busy}/{row.slots_total}",
                counts.text if counts is not None else "-",
                format_age(row.last_seen_ago_s),
                row.issues_text or "-",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(PLAIN_COLUMNS) - 1)]
    for r in table:
        cells = [cell.ljust(width) for cell, width in zip(r, widths, strict=False)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines) + "\n"

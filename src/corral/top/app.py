"""``corral top``: a terminal dashboard of one balancer's fleet (Textual).

Two loops feed the screen. One follows the management listener's event stream
(``GET /api/v1/agents/stream``) and, when the balancer cannot be reached, says so and
tries again with a growing delay. The other scrapes ``/metrics`` every few seconds for
the request and token rates. Both are injectable: a *source* is a zero-argument
callable returning an async iterator of snapshot dicts (one connection; an exception
or its end means "disconnected"), and *metrics* a zero-argument coroutine function
returning Prometheus text. Tests pass fakes and need no network.

What to show is decided in :mod:`corral.top.model`; this module only puts it on the
screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import aiohttp
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.widgets.data_table import CellDoesNotExist

from corral.top.model import (
    ISSUES_WIDTH,
    MODEL_WIDTH,
    NAME_WIDTH,
    NO_AGENTS,
    SEEN_WIDTH,
    SLOTS_WIDTH,
    STATE_WIDTH,
    AgentRow,
    Counters,
    History,
    Rates,
    Snapshot,
    SseDecoder,
    backoff,
    compute_rates,
    detail_fields,
    format_age,
    next_sort,
    parse_counters,
    parse_snapshot,
    plain_report,
    signals_line,
    slots_cell,
    sort_rows,
    summary_lines,
    truncate,
)

SnapshotSource = Callable[[], AsyncIterator[Any]]
"""Opens one connection and yields the fleet snapshots (JSON dicts) it receives."""
MetricsSource = Callable[[], Awaitable[str]]
"""Reads the balancer's ``/metrics`` once (Prometheus text)."""

AGENTS_PATH = "/api/v1/agents"
STREAM_PATH = "/api/v1/agents/stream"
METRICS_PATH = "/metrics"
"""The balancer's default ``--management-addr``."""

STATE_STYLES = {
    "ready": "green",
    "loading": "yellow",
    "draining": "cyan",
    "unhealthy": "bold red",
    "error": "bold red",
}
COLUMNS = (
    ("name", "Name", NAME_WIDTH),
    ("model", "Model", MODEL_WIDTH),
    ("state", "State", STATE_WIDTH),
    ("slots", "Slots", SLOTS_WIDTH),
    ("issues", "Issues", ISSUES_WIDTH),
    ("seen", "Seen", SEEN_WIDTH),
)


class SourceError(Exception):
    """The management listener answered, but not with what ``corral top`` needs."""


# ------------------------------------------------------------------ data sources


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check(response: aiohttp.ClientResponse, url: str) -> None:
    if response.status == 401:
        raise SourceError("the balancer refused the management token (--management-token)")
    if response.status != 200:
        raise SourceError(f"HTTP {response.status} from {url}")


def sse_source(
    management_url: str,
    token: str | None = None,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 45.0,
) -> SnapshotSource:
    """The snapshots streamed by the balancer at ``management_url``.

    ``read_timeout`` is longer than the balancer's 15 s keep-alive, so a balancer that
    went silent (a half-open connection) counts as disconnected.
    """
    url = management_url.rstrip("/") + STREAM_PATH

    async def stream() -> AsyncIterator[Any]:
        timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=_headers(token)) as response,
        ):
            _check(response, url)
            decoder = SseDecoder()
            async for chunk in response.content.iter_any():
                for event in decoder.feed(chunk):
                    if event.event != "fleet":
                        continue
                    try:
                        data = json.loads(event.data)
                    except ValueError:
                        continue  # one bad event; the next one replaces it anyway
                    yield data

    return stream


def metrics_reader(
    management_url: str, token: str | None = None, *, timeout: float = 5.0
) -> MetricsSource:
    """Reads ``/metrics`` of the balancer at ``management_url``."""
    url = management_url.rstrip("/") + METRICS_PATH

    async def read() -> str:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, headers=_headers(token)) as response,
        ):
            _check(response, url)
            return await response.text()

    return read


ONCE_TIMEOUT = 5.0
"""Seconds ``corral top --once`` gives the balancer to answer both reads."""


async def read_once(management_url: str, token: str | None = None) -> str:
    """The fleet now, as :func:`~corral.top.model.plain_report` prints it
    (``corral top --once``): one read of ``/api/v1/agents`` and one of ``/metrics``.

    Raises:
        SourceError: The balancer answered, but refused the token or did not send a
            fleet.
        aiohttp.ClientError, TimeoutError: It could not be reached.
    """
    base = management_url.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ONCE_TIMEOUT)) as session:
        async with session.get(base + AGENTS_PATH, headers=_headers(token)) as response:
            _check(response, base + AGENTS_PATH)
            try:
                data = await response.json(content_type=None)
            except ValueError:
                data = None
            if not isinstance(data, dict) or not isinstance(data.get("agents"), list):
                raise SourceError(f"{base + AGENTS_PATH} did not answer a fleet (is it Corral?)")
        counters = None
        with contextlib.suppress(SourceError, aiohttp.ClientError, TimeoutError):
            async with session.get(base + METRICS_PATH, headers=_headers(token)) as response:
                _check(response, base + METRICS_PATH)
                counters = parse_counters(await response.text(), time.monotonic())
    return plain_report(parse_snapshot(data), counters)


def describe(exc: BaseException) -> str:
    """An exception in words, for the status line."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------------ screens


def _cells(row: AgentRow) -> tuple[Text, ...]:
    """One table row. Rich ``Text``, never markup: names may contain ``[``."""
    return (
        Text(truncate(row.name, NAME_WIDTH), no_wrap=True),
        Text(truncate(row.model or "-", MODEL_WIDTH), no_wrap=True),
        Text(truncate(row.state or "?", STATE_WIDTH), style=STATE_STYLES.get(row.state, "")),
        Text(slots_cell(row.slots_busy, row.slots_total), no_wrap=True),
        Text(truncate(row.issues_text, ISSUES_WIDTH), style="red" if row.issues else ""),
        Text(format_age(row.last_seen_ago_s), no_wrap=True),
    )


class AgentTable(DataTable[Text]):
    """The agents, one per row; Enter opens the one under the cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Detail")]


class AgentScreen(Screen[None]):
    """All of one agent's fields and issues. Follows the agent as snapshots arrive."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Back")]

    DEFAULT_CSS = """
    AgentScreen #agent-title { height: 1; padding: 0 1; background: $primary; }
    AgentScreen #agent-body { height: 1fr; }
    AgentScreen #agent-detail { padding: 0 1; }
    """

    def __init__(self, key: str, row: AgentRow | None, history: History | None = None) -> None:
        super().__init__()
        self.key = key
        self.row = row
        self.left = row is None
        self.history = history

    def compose(self) -> ComposeResult:
        yield Static(id="agent-title")
        with VerticalScroll(id="agent-body"):
            yield Static(id="agent-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.show(self.row)

    def show(self, row: AgentRow | None) -> None:
        """Show ``row``, the agent's latest state; None: it left the fleet."""
        if row is not None:
            self.row = row
        self.left = row is None
        shown = self.row
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(f"Agent {shown.name if shown else self.key}", style="bold")
        if self.left:
            title.append("  (left the fleet)", style="bold red")
        self.query_one("#agent-title", Static).update(title)
        self.query_one("#agent-detail", Static).update(self.render_detail(shown))

    def render_detail(self, row: AgentRow | None) -> Text:
        text = Text()
        if row is None:
            text.append("This agent is not in the fleet.")
            return text
        for label, value in detail_fields(row, self.history):
            style = STATE_STYLES.get(value, "") if label == "State" else ""
            text.append(f"{label:<14}", style="bold")
            text.append(value + "\n", style=style)
        text.append("\n")
        if not row.issues:
            text.append("No issues.\n", style="green")
        else:
            text.append(f"Issues ({len(row.issues)})\n", style="bold red")
            for issue in row.issues:
                text.append("  • ")
                if issue.code:
                    text.append(f"{issue.code}: ", style="bold")
                text.append(f"{issue.message or '-'}\n")
        return text

    def action_close(self) -> None:
        self.dismiss()


class TopApp(App[None]):
    """The live fleet of one balancer: agents, slots, buffered requests and rates.

    Args:
        management_url: The balancer's management listener, e.g. ``http://127.0.0.1:8060``.
        token: Its ``--management-token``, if it has one.
        source: Where snapshots come from (default: :func:`sse_source`).
        metrics: Where ``/metrics`` text comes from (default: :func:`metrics_reader`).
        metrics_interval: Seconds between scrapes of ``/metrics``.
        retry_delay: Seconds to wait before reconnection attempt ``n`` (1, 2, ...).
        clock: Monotonic seconds, for rates.
    """

    TITLE = "corral top"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("s", "sort", "Sort"),
    ]
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #title { height: 1; padding: 0 1; background: $primary; }
    #summary { height: 3; padding: 0 1; }
    #status { height: auto; max-height: 3; padding: 0 1; color: $text-muted; }
    #status.-error { color: $error; text-style: bold; }
    #status.-empty { color: $warning; text-style: bold; }
    #agents { height: 1fr; }
    """

    def __init__(
        self,
        management_url: str,
        token: str | None = None,
        *,
        source: SnapshotSource | None = None,
        metrics: MetricsSource | None = None,
        metrics_interval: float = 2.0,
        retry_delay: Callable[[int], float] = backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.management_url = management_url
        self.source = source or sse_source(management_url, token)
        self.metrics = metrics or metrics_reader(management_url, token)
        self.metrics_interval = metrics_interval
        self.retry_delay = retry_delay
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.rates: Rates | None = None
        self.history = History()
        self.sort_key = "name"
        self.status = "connecting"
        """``connecting``, ``connected`` or ``unreachable``."""
        self.error = ""
        self.attempts = 0
        """Failed connections in a row."""
        self.updates = 0
        """Snapshots received (tests wait on it)."""
        self.updated_at = ""
        self._counters: Counters | None = None
        self._shown: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="summary")
        yield Static(id="status")
        yield AgentTable(id="agents", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#agents", AgentTable)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        table.focus()
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append("corral top", style="bold")
        title.append(f"  {self.management_url}")
        self.query_one("#title", Static).update(title)
        self._render()
        self.run_worker(self._follow(), name="stream", group="top")
        self.run_worker(self._scrape(), name="metrics", group="top")

    # ---------------------------------------------------------------- loops
    async def _follow(self) -> None:
        """Follow the source for ever; after a failure wait, then connect again."""
        while True:
            stream = self.source()
            try:
                async for data in stream:
                    self.attempts = 0
                    self.status, self.error = "connected", ""
                    self._apply(parse_snapshot(data))
                reason = "the balancer closed the stream"
            except Exception as exc:
                reason = describe(exc)
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            self.attempts += 1
            delay = self.retry_delay(self.attempts)
            self.status, self.error = "unreachable", reason
            with contextlib.suppress(NoMatches):
                self._render_status(delay)
            await asyncio.sleep(delay)

    async def _scrape(self) -> None:
        """Read the counters every ``metrics_interval`` and keep the rates between the
        last two reads (none while ``/metrics`` cannot be read)."""
        while True:
            try:
                counters = parse_counters(await self.metrics(), self.clock())
            except Exception:
                counters = None
            if counters is None:
                self.rates = None
            elif self._counters is not None:
                self.rates = compute_rates(self._counters, counters) or self.rates
                self.history.record(self.snapshot, self.rates)
            if counters is not None:
                self.history.cache = counters.agent_cache
            self._counters = counters
            with contextlib.suppress(NoMatches):  # not mounted yet, or shutting down
                self._render_summary()
                if isinstance(self.screen, AgentScreen) and self.snapshot is not None:
                    self.screen.show(self.snapshot.agent(self.screen.key))
            await asyncio.sleep(self.metrics_interval)

    # -------------------------------------------------------------- drawing
    def _apply(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.updates += 1
        self.updated_at = time.strftime("%H:%M:%S")
        self._render()
        if isinstance(self.screen, AgentScreen):
            self.screen.show(snapshot.agent(self.screen.key))

    def _render(self) -> None:
        # The worker may get data before the main screen is mounted, or while the
        # app shuts down; then there is nothing to draw yet (or any more).
        with contextlib.suppress(NoMatches):
            self._render_summary()
            self._render_status()
            self._render_table()

    def _render_summary(self) -> None:
        fleet, rates = summary_lines(self.snapshot, self.rates, self.sort_key)
        if self.updated_at:
            rates += f"  updated {self.updated_at}"
        signals = signals_line(self._counters)
        self.query_one("#summary", Static).update(
            Text(f"{fleet}\n{rates}\n{signals}", no_wrap=True, overflow="ellipsis")
        )

    def _render_status(self, retry_in: float | None = None) -> None:
        status = self.query_one("#status", Static)
        status.set_class(self.status == "unreachable", "-error")
        empty = (
            self.status == "connected" and self.snapshot is not None and not self.snapshot.agents
        )
        status.set_class(empty, "-empty")
        if self.status == "unreachable":
            again = f" Retrying in {retry_in:.1f}s" if retry_in is not None else " Retrying"
            message = (
                f"Cannot reach the balancer at {self.management_url}: {self.error}."
                f"{again} (attempt {self.attempts})."
            )
            if self.snapshot is not None:
                message += " The table shows the last known state."
        elif self.status == "connecting":
            message = f"Connecting to {self.management_url}..."
        elif empty:
            message = NO_AGENTS
        else:
            message = "Connected: live."
        status.update(Text(message))

    def _render_table(self) -> None:
        table = self.query_one("#agents", AgentTable)
        rows = sort_rows(self.snapshot.agents, self.sort_key) if self.snapshot else []
        keys = [row.key for row in rows]
        if keys == self._shown:
            for row in rows:
                for (column, _, _), cell in zip(COLUMNS, _cells(row), strict=True):
                    table.update_cell(row.key, column, cell)
            return
        selected = self.selected_key()
        table.clear()
        for row in rows:
            table.add_row(*_cells(row), key=row.key)
        self._shown = keys
        if selected in keys:
            table.move_cursor(row=keys.index(selected))

    def selected_key(self) -> str | None:
        """The key of the agent under the cursor, if any."""
        table = self.query_one("#agents", AgentTable)
        if not table.row_count:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except CellDoesNotExist:
            return None

    # -------------------------------------------------------------- actions
    def action_sort(self) -> None:
        """Cycle the sort column: name, state, busy slots, free slots."""
        self.sort_key = next_sort(self.sort_key)
        self._render_summary()
        self._render_table()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # sorting means nothing on an agent's detail screen: hide it there
        return not (action == "sort" and isinstance(self.screen, AgentScreen))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.open_agent(event.row_key.value)

    def open_agent(self, key: str) -> None:
        """Show one agent's detail screen."""
        row = self.snapshot.agent(key) if self.snapshot else None
        self.push_screen(AgentScreen(key, row, self.history))


# -------------------------------------------------------------------------- CLI


def main(management_url: str, token: str | None) -> None:
    """Run the dashboard until the user presses ``q`` (``corral top`` in the CLI)."""
    TopApp(management_url, token).run()

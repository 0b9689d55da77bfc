"""The web dashboard in real headless Chromium (Playwright), on a real fleet."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from support.procs import Fleet

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = (
    Path(os.environ.get("CORRAL_SCREENSHOTS", "")) if os.environ.get("CORRAL_SCREENSHOTS") else None
)


def test_dashboard_is_live_and_the_playground_streams(fleet: Fleet):
    _, _, management = fleet.balancer()
    fleet.supervised_agent("llama-1", management, slots=2)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"http://127.0.0.1:{management}/dashboard")
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator('tr[data-agent="llama-1"]')).to_contain_text("ready")
        expect(page.locator('tr[data-agent="llama-1"]')).to_contain_text("0 / 2")

        # an agent that joins shows up, and goes when it leaves: no reload
        _, sim_port = fleet.sim("sim-2", slots=3)
        agent = fleet.agent("<b>sim-2</b> 🚀", sim_port, management)
        row = page.locator('tr[data-agent="<b>sim-2</b> 🚀"]')
        expect(row).to_contain_text("<b>sim-2</b> 🚀")  # shown as text, not as HTML
        expect(page.locator("#t-idle")).to_have_text("5")
        if SHOTS:
            page.screenshot(path=str(SHOTS / "dashboard.png"))
        agent.stop()
        expect(row).to_have_count(0)

        # the playground streams an answer from the real llama-server
        page.click('nav a[data-tab="playground"]')
        expect(page.locator("#p-model option")).to_have_count(1)
        # first as a text completion (the default: what a base model does), then chat
        expect(page.locator("#p-mode")).to_have_value("complete")
        page.fill("#p-prompt", "Once upon a time")
        page.fill("#p-max", "12")
        page.click("#p-send")
        expect(page.locator("#p-stats")).to_have_attribute("data-done", "1", timeout=60_000)
        expect(page.locator("#p-stats")).to_contain_text("time to first token")
        assert page.locator("#answer").inner_text().strip()
        page.select_option("#p-mode", "chat")
        page.evaluate("document.getElementById('p-stats').removeAttribute('data-done')")
        page.click("#p-send")
        expect(page.locator("#p-stats")).to_have_attribute("data-done", "1", timeout=60_000)
        assert page.locator("#answer").inner_text().strip()
        if SHOTS:
            page.screenshot(path=str(SHOTS / "playground.png"))

        # the desired-state form shows the API's answer
        page.click('nav a[data-tab="desired"]')
        page.fill("#d-model", "")
        page.click("#d-apply")
        expect(page.locator("#d-msg")).to_contain_text("$.model")
        if SHOTS:
            page.screenshot(path=str(SHOTS / "desired-state.png"))
        browser.close()


def _stream(inference: int, model: str, tokens: int) -> None:
    """One long streamed chat, read to its end (or until the fleet stops)."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{inference}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=120) as reply:
        while reply.read(4096):
            pass


def _chart(page: Page, card: str) -> dict:
    """What a chart shows: axis label, series names, points and largest value per series."""
    return page.evaluate(
        """(id) => { const u = window.corral.charts[id].plot;
            return { unit: u.axes[1].label, xTime: u.scales.x.time,
                     names: u.series.slice(1).map((s) => s.label),
                     points: u.data[0].length,
                     peaks: u.data.slice(1).map(
                         (col) => Math.max(0, ...col.filter((v) => v != null))),
                     width: u.width, card: document.getElementById(id).clientWidth }; }""",
        card,
    )


def test_dashboard_charts_are_readable_under_load(fleet: Fleet):
    _, inference, management = fleet.balancer()
    _, a = fleet.sim("sim-a", 2, "--tokens-per-second", "20", model="gemma-3-270m")
    _, b = fleet.sim("sim-b", 2, "--tokens-per-second", "8", model="qwen3-0.6b")
    fleet.agent("sim-a", a, management)
    fleet.agent("sim-b", b, management)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(f"http://127.0.0.1:{management}/dashboard")
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator("#ch-slots .now")).to_have_text("0 / 4 busy · 0 buffered")
        expect(page.locator("#window")).to_have_value("300")  # the last 5 minutes
        if SHOTS:
            page.screenshot(path=str(SHOTS / "dashboard-idle.png"), full_page=True)

        # four streams for gemma (two slots: two wait in the buffer), two for qwen
        load = [("gemma-3-270m", 4), ("qwen3-0.6b", 2)]
        for model, count in load:
            for _ in range(count):
                threading.Thread(target=_stream, args=(inference, model, 400), daemon=True).start()
        expect(page.locator("#ch-slots .now")).to_have_text(
            "4 / 4 busy · 2 buffered", timeout=15_000
        )
        # tokens/s follows the streams while they generate: none has ended yet
        expect(page.locator("#ch-tps .now")).not_to_have_text(re.compile("^(\u2013|0 )"))
        page.wait_for_timeout(7_000)  # a few more samples
        tps = _chart(page, "ch-tps")
        assert tps["unit"] == "tokens/s" and tps["xTime"], tps
        assert sorted(tps["names"]) == ["gemma-3-270m", "qwen3-0.6b"], tps  # per model
        assert tps["points"] >= 4 and all(peak > 0 for peak in tps["peaks"]), tps
        assert tps["width"] >= tps["card"] - 40, tps  # the plot fills its card
        slots = _chart(page, "ch-slots")
        assert slots["names"] == ["slots busy", "slots total", "buffered requests"], slots
        assert slots["peaks"] == [4, 4, 2], slots
        for card, unit in (("ch-rps", "requests/s"), ("ch-ttft", "seconds")):
            assert _chart(page, card)["unit"] == unit
        assert float(page.locator("#t-tps").inner_text()) > 0
        row = page.locator('tr[data-agent="sim-a"]')
        expect(row.locator(".tps")).to_contain_text("tok/s")
        assert not row.locator(".tps").inner_text().startswith(("0 ", "\u2013"))
        assert int(row.locator(".hist-busy svg").get_attribute("data-points")) >= 3
        if SHOTS:
            page.screenshot(path=str(SHOTS / "dashboard-busy.png"), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            page.wait_for_timeout(500)
            page.screenshot(path=str(SHOTS / "dashboard-phone.png"), full_page=True)
        narrow = _chart(page, "ch-tps")
        if SHOTS:
            assert narrow["width"] <= 390
        browser.close()

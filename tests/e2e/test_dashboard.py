"""The web dashboard in real headless Chromium (Playwright), on a real fleet."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
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
        page.fill("#p-prompt", "Say hello")
        page.fill("#p-max", "12")
        page.click("#p-send")
        expect(page.locator("#p-stats")).to_have_attribute("data-done", "1", timeout=60_000)
        expect(page.locator("#p-stats")).to_contain_text("time to first token")
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

"""The dashboard's signals in real headless Chromium (Playwright): a supervised agent
copying its model (bytes, then loading, then its durations), a cold start for a model
scaled from zero, prefix-cache hits measured and predicted, models per host.

The balancer, the simulated servers and the agents run in this process (fast, and the
copy can be slowed down at will); the browser is real."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import async_playwright, expect
from support.fake_llama import fake_llama_server
from support.harness import Harness, harness_fixture, url

from corral.addr import Addr
from corral.agent import Agent, AgentConfig
from corral.agent.supervisor import ServerSettings, Supervisor
from corral.llamacpp.sources import Progress, cache_atomically

pytestmark = pytest.mark.e2e
__all__ = ["harness_fixture"]

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = (
    Path(os.environ.get("CORRAL_SCREENSHOTS", "")) if os.environ.get("CORRAL_SCREENSHOTS") else None
)
MB = 1 << 20
PROMPT = "The herd of llamas walked along the ridge at dawn, " * 48  # 2.4 KB: 2 index blocks


def _slow_copy(target: Path, chunks: int, pause: float) -> Any:
    def write(path: Path) -> None:
        with path.open("wb") as file:
            for _ in range(chunks):
                file.write(b"\0" * 8 * MB)
                file.flush()
                time.sleep(pause)

    def copy(progress: Progress | None) -> Path:
        return cache_atomically(target, write, total=chunks * 8 * MB, progress=progress)

    return copy


async def _supervised(harness: Harness, balancer: Any, tmp_path: Path, model: Path) -> Agent:
    binary = fake_llama_server(tmp_path, loading_seconds=1.5, tokens_per_second=200)
    server = Supervisor(
        ServerSettings(model=model, binary=binary, slots=2), name="qwen", log_server_output=False
    )
    config = AgentConfig(
        management_addrs=(Addr("127.0.0.1", balancer.management_port),),
        name="supervised-qwen",
        poll_interval=0.05,
    )
    agent = Agent(config, server, _slow_copy(model, chunks=12, pause=0.5))  # 96 MB in 6 s
    await agent.start()
    harness._stops.append(agent.stop)
    return agent


async def test_loading_cold_starts_cache_hits_and_models_per_host(harness: Harness, tmp_path: Path):
    balancer = await harness.balancer(routing="prefix", scaled_models=("qwen",))
    _, port = await harness.sim(name="sim-a", slots=2, model="gemma", tokens_per_second=200)
    await harness.agent(port, balancer, name="sim-a")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        await page.goto(f"http://127.0.0.1:{balancer.management_port}/dashboard")
        await expect(page.locator("#conn")).to_have_text("live")

        # a request for qwen, scaled to zero: it waits in the buffer (demand 1)
        body = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        waiting = asyncio.create_task(
            harness.http.post(url(balancer, "/v1/chat/completions"), json=body)
        )
        scaling = page.locator("#card-scaling tr", has_text="qwen")
        await expect(scaling).to_have_text(
            "qwen110 / 0none", timeout=10_000
        )  # demand 1, buffered 1

        # a replica starts: it copies its weights, then loads them
        agent_row = page.locator('tr[data-agent="supervised-qwen"]')
        await _supervised(harness, balancer, tmp_path, tmp_path / "cache" / "qwen.gguf")
        await expect(agent_row.locator(".step")).to_contain_text(
            re.compile(r"copying weights\s+[1-9]\d\.\d MB / 101 MB \(\d+%\)"), timeout=10_000
        )
        await expect(agent_row.locator(".state")).to_have_text("loading")
        if SHOTS:
            await page.screenshot(path=str(SHOTS / "dashboard-copying.png"), full_page=True)
        await expect(agent_row.locator(".step")).to_have_text(
            "loading into memory…", timeout=15_000
        )
        await expect(agent_row.locator(".state")).to_have_text("ready", timeout=15_000)
        await expect(agent_row.locator(".sub")).to_contain_text(re.compile(r"copied in \d\.\d\d s"))
        await expect(agent_row.locator(".sub")).to_contain_text(re.compile(r"loaded in \d\.\d\d s"))
        await expect(agent_row.locator(".sub")).to_contain_text("llamacpp (llamacpp, openai)")
        response = await asyncio.wait_for(waiting, 20)  # answered once the replica was ready
        assert response.status == 200
        response.release()
        # the cold start: from the buffered request to the first ready slot, about 8 s
        await expect(scaling).to_contain_text(re.compile(r"1 \([6-9]\.\d\d s|1 \(1\d\.\d\d s"))

        # prefix routing: the same long prompt again and again hits the server's cache
        completion = {"model": "gemma", "prompt": PROMPT, "n_predict": 4}
        for _ in range(6):
            async with harness.http.post(url(balancer, "/completion"), json=completion) as r:
                assert r.status == 200
        now = page.locator("#ch-cache .now")
        # five of six answers reused the prompt (the servers' own count, cache_n)
        await expect(now).to_have_text(re.compile(r"^([5-9]\d|100)% measured · \d+% predicted$"))
        cache_cell = page.locator('tr[data-agent="sim-a"] td.cache')
        await expect(cache_cell).to_contain_text(re.compile(r"^\d+%\s*predicted \d+%$"))
        await expect(page.locator("#card-cache tr", has_text="sim-a")).to_contain_text("%")

        # models per host: one host, two models, their runners and readiness
        hosts = page.locator("#card-models tbody tr")
        await expect(hosts).to_have_count(2)
        await expect(hosts.nth(0)).to_have_text(
            re.compile(r"127\.0\.0\.1\s*gemma\s*llamacpp\s*1 / 1")
        )
        await expect(hosts.nth(1)).to_have_text(
            re.compile(r"127\.0\.0\.1\s*qwen\s*llamacpp\s*1 / 1")
        )
        # tenants and classes: the requests above came with no key file (tenant
        # "default", interactive); one more asks for the batch class
        batch = {"model": "gemma", "prompt": "hi", "n_predict": 2}
        headers = {"X-Corral-Priority": "batch"}
        async with harness.http.post(
            url(balancer, "/completion"), json=batch, headers=headers
        ) as r:
            assert r.status == 200
        tenants = page.locator("#card-tenants tbody tr")
        await expect(tenants.filter(has_text="interactive")).to_have_text(
            re.compile(r"^default\s*interactive\s*[1-9]\d*\s*0\s*0\s*\d")
        )
        await expect(tenants.filter(has_text="batch")).to_have_text(
            re.compile(r"^default\s*batch\s*1\s*0\s*0\s*\d"), timeout=10_000
        )
        if SHOTS:
            await page.screenshot(path=str(SHOTS / "dashboard-signals.png"), full_page=True)
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.wait_for_timeout(500)
            await page.screenshot(path=str(SHOTS / "dashboard-signals-phone.png"), full_page=True)
        await browser.close()

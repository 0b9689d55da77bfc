"""A balancer restarted in the middle of a Batch API job, on real parts: a real
llama-server behind a counting relay (``benchmarks/counting_relay.py``), a balancer
process with ``--data-dir`` killed with SIGKILL and later stopped with SIGTERM, both
times started again on the same ports and directory, the official OpenAI SDK.

What docs/batch.md promises, checked: every ``custom_id`` once in the output and error
files; after SIGTERM no line reaches a server twice; after SIGKILL only lines in flight
at the kill (already sent, not yet recorded) may reach it twice."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from openai import OpenAI
from support.procs import Fleet, Proc, get_json, wait_until

from corral.llamacpp.process import free_port
from counting_relay import read_counts

pytestmark = pytest.mark.e2e

LINES = 36
CONCURRENCY = 3
RELAY = Path(__file__).parents[2] / "benchmarks" / "counting_relay.py"


def _restart(
    fleet: Fleet,
    proc: Proc,
    sig: signal.Signals,
    name: str,
    args: list[str],
    ports: tuple[int, int],
) -> Proc:
    """Stop the balancer with ``sig``; start it again as ``name`` on the same ports."""
    proc.process.send_signal(sig)
    proc.process.wait(30)
    return fleet.balancer(name, *args, ports=ports)[0]


def test_a_restart_mid_job_loses_nothing_and_repeats_only_lines_in_flight_at_a_kill(
    fleet: Fleet, tmp_path: Path
) -> None:
    _, server = fleet.llama_server("a", 2)
    relay, counts = free_port(), tmp_path / "counts.json"
    fleet._start(
        "relay", [sys.executable, str(RELAY), "--counts", str(counts), f"{relay}:{server}"]
    )
    wait_until(counts.exists, 10, "the relay")
    args = ["--data-dir", str(tmp_path / "data"), "--batch-concurrency", str(CONCURRENCY),
            "--queue", "priority"]  # fmt: skip
    balancer, inference, management = fleet.balancer("balancer", *args)
    ports = (inference, management)
    fleet.agent("a", relay, management)
    sdk = OpenAI(base_url=f"http://127.0.0.1:{inference}/v1", api_key="none", max_retries=2)
    lines = [
        {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gemma", "max_tokens": 8,
                  "messages": [{"role": "user", "content": f"Say the number {i}."}]}}
        for i in range(LINES)
    ]  # fmt: skip
    upload = sdk.files.create(
        file=("in.jsonl", "\n".join(json.dumps(x) for x in lines).encode()), purpose="batch"
    )
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    prefix = f"batch_req_{batch.id.removeprefix('batch_')}_"

    def completed(at_least: int) -> bool:
        return sdk.batches.retrieve(batch.id).request_counts.completed >= at_least

    def sent() -> Counter[str]:
        return Counter({k: n for k, n in read_counts(counts)[0].items() if k.startswith(prefix)})

    # SIGKILL a third of the way: what was sent by then may run again, nothing else
    wait_until(lambda: completed(LINES // 3), 60, "a third of the job")
    balancer = _restart(fleet, balancer, signal.SIGKILL, "balancer-after-kill", args, ports)
    sent_before_kill = set(sent())
    wait_until(lambda: get_json(f"http://127.0.0.1:{management}/api/v1/agents")[1]["agents"]
               and completed(2 * LINES // 3), 60, "two thirds of the job")  # fmt: skip
    # SIGTERM: lines in flight finish and are recorded; none runs again
    sent_before_term = sent()
    _restart(fleet, balancer, signal.SIGTERM, "balancer-after-term", args, ports)
    deadline = time.monotonic() + 60
    while (batch := sdk.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, batch.request_counts
        time.sleep(0.25)
    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 0)

    found = [json.loads(x) for x in sdk.files.content(batch.output_file_id).text.splitlines()]
    if batch.error_file_id:
        found += [json.loads(x) for x in sdk.files.content(batch.error_file_id).text.splitlines()]
    ids = Counter(x["custom_id"] for x in found)
    assert ids == Counter(f"q{i}" for i in range(LINES))  # each once: none lost, none twice

    times = sent()
    assert set(times) == {x["id"] for x in found}  # every recorded line reached the server
    repeated = {k for k, n in times.items() if n > 1}
    assert repeated <= sent_before_kill, (repeated, sent_before_kill)
    assert len(repeated) <= CONCURRENCY
    # nothing sent before the SIGTERM was sent again after it
    assert all(times[k] == n for k, n in sent_before_term.items()), (times, sent_before_term)

    # interactive requests are served by the restarted balancer
    answer = sdk.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content is not None

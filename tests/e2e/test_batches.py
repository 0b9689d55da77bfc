"""The Batch API on real parts: a real llama-server, a balancer process with --data-dir,
the official OpenAI SDK's files and batches calls."""

from __future__ import annotations

import json
import time

import pytest
from openai import OpenAI
from support.procs import Fleet, get_json

pytestmark = pytest.mark.e2e

LINES = 30


def test_a_batch_job_completes_through_the_sdk(fleet: Fleet, tmp_path):
    _, server = fleet.llama_server("a", slots=2)
    _, inference, management = fleet.balancer(
        "balancer", "--data-dir", str(tmp_path / "data"), "--batch-concurrency", "4"
    )
    fleet.agent("a", server, management)
    sdk = OpenAI(base_url=f"http://127.0.0.1:{inference}/v1", api_key="none", max_retries=0)
    requests = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gemma",
                "messages": [{"role": "user", "content": f"Say the number {i}."}],
                "max_tokens": 8,
            },
        }
        for i in range(LINES)
    ]
    data = "\n".join(json.dumps(r) for r in requests).encode()
    upload = sdk.files.create(file=("questions.jsonl", data), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.request_counts.total == LINES
    seen = []
    deadline = time.monotonic() + 240
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.5)
        batch = sdk.batches.retrieve(batch.id)
        seen.append(batch.request_counts.completed)
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == LINES and batch.request_counts.failed == 0
    assert seen == sorted(seen)  # progress only goes up
    assert [b.id for b in sdk.batches.list()] == [batch.id]

    lines = [json.loads(x) for x in sdk.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(r["custom_id"] for r in requests)
    for x in lines:
        body = x["response"]["body"]
        assert x["response"]["status_code"] == 200 and x["error"] is None
        assert body["choices"][0]["message"]["content"]
        assert 0 < body["usage"]["completion_tokens"] <= 8
    jobs = get_json(f"http://127.0.0.1:{management}/api/v1/batches")[1]
    assert jobs["batches"][0]["status"] == "completed"

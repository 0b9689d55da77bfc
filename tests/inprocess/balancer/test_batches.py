"""The Batch API through the official OpenAI SDK: files, batches, progress, cancel,
expiry, and a balancer restart in the middle of a job (docs/batch.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from support.harness import Harness, eventually, mgmt

from corral.balancer import Balancer
from corral.balancer.batches import BatchStore

KEY = "batch-test-key"


def jsonl(n: int, *, max_tokens: int = 4, prefix: str = "req") -> bytes:
    lines = [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "sim-model",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": max_tokens,
            },
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(x) for x in lines).encode() + b"\n"


def client(harness: Harness, balancer: Balancer, key: str = KEY) -> openai.AsyncOpenAI:
    api = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{balancer.inference_port}/v1", api_key=key, max_retries=0
    )
    harness._stops.append(api.close)
    return api


async def fleet(
    harness: Harness, data_dir: Path, *, tps: float = 1e6, slots: int = 4, **over: Any
) -> tuple[Balancer, openai.AsyncOpenAI]:
    balancer = await harness.balancer(data_dir=data_dir, api_keys=(KEY,), **over)
    _, port = await harness.sim(slots=slots, tokens_per_second=tps)
    await harness.agent(port, balancer)
    return balancer, client(harness, balancer)


async def output(api: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await api.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def finished(api: openai.AsyncOpenAI, batch_id: str, within: float = 20.0) -> Any:
    async def check() -> Any:
        batch = await api.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "cancelled", "expired", "failed") else None

    return await eventually(check, within=within, what=f"batch {batch_id} to end")


async def test_a_batch_runs_every_line_once(harness: Harness, tmp_path: Path) -> None:
    balancer, api = await fleet(harness, tmp_path)
    upload = await api.files.create(file=("in.jsonl", jsonl(12)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(jsonl(12))
    assert (await api.files.retrieve(upload.id)).filename == "in.jsonl"
    assert (await api.files.content(upload.id)).content == jsonl(12)

    batch = await api.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 12
    done = await finished(api, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (12, 0)
    assert done.metadata == {"job": "nightly"} and done.completed_at is not None
    assert done.error_file_id is None
    lines = await output(api, done.output_file_id)
    assert sorted(x["custom_id"] for x in lines) == sorted(f"req-{i}" for i in range(12))
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["body"]["choices"][0]["message"]["content"]
        assert line["id"].startswith("batch_req_")
    listed = [b.id async for b in api.batches.list()]
    assert listed == [batch.id]
    # the balancer counted exactly one chat completion per line
    assert balancer.metrics.counts.requests == 12

    # the dashboard's source on the management listener
    async with harness.http.get(mgmt(balancer, "/api/v1/batches")) as resp:
        jobs = await resp.json()
    assert jobs["enabled"] and jobs["batches"][0]["request_counts"]["completed"] == 12

    assert (await api.files.delete(upload.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await api.files.retrieve(upload.id)
    keyless = client(harness, balancer, key="wrong")
    with pytest.raises(openai.AuthenticationError):
        await keyless.batches.list()


async def test_answers_that_are_errors_go_to_the_error_file(
    harness: Harness, tmp_path: Path
) -> None:
    _, api = await fleet(harness, tmp_path)
    good = json.loads(jsonl(1).decode())
    bad = {**good, "custom_id": "bad", "body": {"model": "no-such-model", "messages": []}}
    data = (json.dumps(good) + "\n" + json.dumps(bad) + "\n").encode()
    upload = await api.files.create(file=("in.jsonl", data), purpose="batch")
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await finished(api, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    [error] = await output(api, done.error_file_id)
    assert error["custom_id"] == "bad" and error["response"]["status_code"] >= 400
    assert [x["custom_id"] for x in await output(api, done.output_file_id)] == ["req-0"]


async def test_an_invalid_input_file_fails_the_batch(harness: Harness, tmp_path: Path) -> None:
    _, api = await fleet(harness, tmp_path)
    data = jsonl(2) + jsonl(1)  # req-0 twice
    upload = await api.files.create(file=("in.jsonl", data), purpose="batch")
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed" and batch.errors is not None
    [error] = batch.errors.data or []
    assert (error.code, error.line) == ("duplicate_custom_id", 3)
    with pytest.raises(openai.BadRequestError):
        await api.batches.create(
            input_file_id=upload.id, endpoint="/v1/images", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        await api.batches.retrieve("batch_nope")


async def test_cancel_stops_the_job_and_accounts_for_every_line(
    harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="corral.access")
    # 40 tokens/s, 8 tokens a line: about 0.2 s a line, two at a time
    balancer, api = await fleet(harness, tmp_path, tps=40.0, slots=2, batch_concurrency=2)
    upload = await api.files.create(file=("in.jsonl", jsonl(30, max_tokens=8)), purpose="batch")
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    async def progressed() -> bool:
        return (await api.batches.retrieve(batch.id)).request_counts.completed >= 2

    await eventually(progressed, within=10, what="some progress")
    cancelling = await api.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = await finished(api, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    assert 2 <= counts.completed < 30 and counts.completed + counts.failed == 30
    ok = await output(api, done.output_file_id)
    errors = await output(api, done.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    ids = [x["custom_id"] for x in ok + errors]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(30))  # each exactly once
    assert balancer.batches is not None and balancer.batches.runner.in_flight == 0
    with pytest.raises(openai.ConflictError):  # it has ended: 409
        await api.batches.cancel(batch.id)
    # the lines in flight when it was cancelled finished, as OpenAI's cancelling lets
    # them: none was cut off (499) and then reported as not run
    sent = [r.getMessage() for r in caplog.records if "batch_req_" in r.getMessage()]
    assert sent and not [line for line in sent if " 499 " in line], sent
    assert sum(" 200 " in line for line in sent) == counts.completed


async def test_a_batch_past_its_window_expires(harness: Harness, tmp_path: Path) -> None:
    _, api = await fleet(harness, tmp_path, tps=20.0, slots=1, batch_concurrency=1)
    upload = await api.files.create(file=("in.jsonl", jsonl(20, max_tokens=8)), purpose="batch")
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="2s"
    )
    assert batch.expires_at == batch.created_at + 2
    done = await finished(api, batch.id)
    assert done.status == "expired" and done.expired_at is not None
    errors = await output(api, done.error_file_id)
    ok = await output(api, done.output_file_id)
    assert errors and {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert sorted(x["custom_id"] for x in ok + errors) == sorted(f"req-{i}" for i in range(20))


async def test_a_restart_mid_job_loses_nothing_and_repeats_nothing(
    harness: Harness, tmp_path: Path
) -> None:
    first, api = await fleet(harness, tmp_path, tps=50.0, slots=2, batch_concurrency=3)
    upload = await api.files.create(file=("in.jsonl", jsonl(30, max_tokens=6)), purpose="batch")
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    async def progressed() -> bool:
        return (await api.batches.retrieve(batch.id)).request_counts.completed >= 6

    await eventually(progressed, within=15, what="some progress")
    await first.stop()  # mid-job: lines in flight finish and are recorded
    before = first.metrics.counts.requests
    kept = BatchStore(tmp_path)  # what the stopped balancer left on disk
    mid = kept.batch(batch.id)
    kept.close()
    assert mid["status"] == "in_progress" and 6 <= mid["request_counts"]["completed"] < 30

    second, api = await fleet(harness, tmp_path, tps=1e6)
    done = await finished(api, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 30
    lines = await output(api, done.output_file_id)
    assert sorted(x["custom_id"] for x in lines) == sorted(f"req-{i}" for i in range(30))
    # each line was sent to a server exactly once, across both balancers
    assert before + second.metrics.counts.requests == 30, (before, second.metrics.counts)


TENANTS = """
[[tenant]]
name = "chat"
key = "sk-chat"

[[tenant]]
name = "nightly"
key = "sk-nightly"
class = "batch"
"""


async def test_a_batch_runs_as_the_tenant_that_created_it(harness: Harness, tmp_path: Path):
    """With a TOML keys file every line failed 401: the runner sent the first plain
    key, and there was none. Lines now run as their batch's creator, keyless (counted
    under its name), and a tenant the keys file no longer names runs nothing."""
    from corral.config.keys import parse_keys

    keys = tuple(parse_keys(TENANTS))
    balancer = await harness.balancer(data_dir=tmp_path, tenant_keys=keys, queue="priority")
    _, port = await harness.sim(slots=4, tokens_per_second=1e6)
    await harness.agent(port, balancer)
    api = client(harness, balancer, key="sk-nightly")
    upload = await api.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await finished(api, batch.id)
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 0), done
    async with harness.http.get(mgmt(balancer, "/metrics")) as r:
        text = await r.text()
    counted = [
        line for line in text.splitlines()
        if line.startswith("corral_tenant_requests_total{") and 'tenant="nightly"' in line
        and 'priority="batch"' in line
    ]  # fmt: skip
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == 3, counted


@pytest.mark.parametrize("tenant", ["gone", None])
async def test_a_batch_whose_key_is_gone_runs_nothing(
    harness: Harness, tmp_path: Path, tenant: str | None
) -> None:
    """Made before a restart with other keys (its tenant's key revoked; or made with a
    plain --api-key, or with no key asked, and no plain key left): its lines are
    refused, not run as someone else."""
    from corral.balancer.batches.wire import parse_input
    from corral.config.keys import parse_keys

    store = BatchStore(tmp_path)
    lines, errors = parse_input(jsonl(2), "/v1/chat/completions", 100)
    made = store.create_batch("file-x", "/v1/chat/completions", "24h", 86400, None, lines, errors,
                              tenant=tenant)  # fmt: skip
    store.close()
    keys = tuple(parse_keys(TENANTS))
    balancer = await harness.balancer(data_dir=tmp_path, tenant_keys=keys, queue="priority")
    _, port = await harness.sim(slots=4, tokens_per_second=1e6)
    await harness.agent(port, balancer)
    api = client(harness, balancer, key="sk-chat")
    with pytest.raises(openai.NotFoundError):  # another tenant's: not there for this key
        await api.batches.retrieve(made["id"])

    def ended() -> dict[str, Any] | None:  # read as the operator does, in the database
        store = BatchStore(tmp_path)
        try:
            batch = store.batch(made["id"])
            if batch["status"] != "completed":
                return None
            return {**batch, "errors_out": store.content(batch["error_file_id"])}
        finally:
            store.close()

    done = await eventually(ended, within=20, what="the batch to end")
    counts = done["request_counts"]
    assert (counts["completed"], counts["failed"]) == (0, 2), done
    errors_out = [json.loads(line) for line in done["errors_out"].splitlines()]
    assert all(e["response"]["status_code"] == 401 for e in errors_out), errors_out
    assert f"no key names the tenant '{tenant or 'default'}' now" in json.dumps(errors_out)


async def test_a_tenant_sees_only_its_own_files_and_batches(
    harness: Harness, tmp_path: Path
) -> None:
    """Any key could list, read, cancel and download another tenant's batches and
    files (its completions among them). Now each tenant's are there for it alone:
    another's answer 404, as a missing one does, and lists leave them out; the default
    tenant (a plain key) is a tenant like the others."""
    from corral.config.keys import parse_keys

    keys = tuple(parse_keys(TENANTS))
    balancer = await harness.balancer(
        data_dir=tmp_path, tenant_keys=keys, api_keys=("sk-plain",), queue="priority"
    )
    _, port = await harness.sim(slots=4, tokens_per_second=1e6)
    await harness.agent(port, balancer)
    owner = client(harness, balancer, key="sk-nightly")
    upload = await owner.files.create(file=("in.jsonl", jsonl(2)), purpose="batch")
    batch = await owner.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await finished(owner, batch.id)
    assert done.output_file_id is not None and len(await output(owner, done.output_file_id)) == 2
    assert [f.id for f in (await owner.files.list()).data] == [done.output_file_id, upload.id]
    assert [b.id for b in (await owner.batches.list()).data] == [batch.id]
    for key in ("sk-chat", "sk-plain"):
        other = client(harness, balancer, key=key)
        assert (await other.files.list()).data == [] and (await other.batches.list()).data == []
        for call in (
            other.batches.retrieve(batch.id),
            other.batches.cancel(batch.id),
            other.batches.list(after=batch.id),
            other.files.retrieve(upload.id),
            other.files.content(done.output_file_id),  # the completions
            other.files.delete(upload.id),
            other.batches.create(  # nor run another's file as its own
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            ),
        ):
            with pytest.raises(openai.NotFoundError):
                await call
    assert (await owner.files.retrieve(upload.id)).id == upload.id  # still there


async def test_a_database_from_before_tenants_runs_its_batches(
    harness: Harness, tmp_path: Path
) -> None:
    """A running batch in a database made before batches kept their tenant (no such
    column): opened, the column is added, and its lines run as the default tenant."""
    import sqlite3

    from corral.balancer.batches.wire import parse_input

    store = BatchStore(tmp_path)
    lines, errors = parse_input(jsonl(3), "/v1/chat/completions", 100)
    made = store.create_batch("file-x", "/v1/chat/completions", "24h", 86400, None, lines, errors)
    store.close()
    with sqlite3.connect(tmp_path / "corral.sqlite3") as db:
        db.execute("ALTER TABLE batches DROP COLUMN tenant")  # as the old schema had it
    balancer, api = await fleet(harness, tmp_path)  # keys: a plain --api-key, default's
    done = await finished(api, made["id"])
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 0), done
    assert balancer.batches is not None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "completion_window is required"),  # OpenAI's SDK always sends it
        ({"completion_window": "24h", "metadata": {"a": 1}},
         "metadata must be an object of strings"),
        ({"completion_window": "24h", "metadata": {f"k{i}": "v" for i in range(17)}},
         "metadata has 17 pairs; at most 16"),
        ({"completion_window": "24h", "metadata": {"k": "v" * 513}}, "values 512"),
        ({"completion_window": "24h", "metadata": {"k" * 65: "v"}}, "keys take at most 64"),
    ],
)  # fmt: skip
async def test_batch_creation_keeps_to_openais_bounds(
    harness: Harness, tmp_path: Path, params: dict[str, Any], message: str
) -> None:
    """A missing window was taken as 24h; metadata of numbers, or of any size, was kept."""
    balancer, api = await fleet(harness, tmp_path)
    upload = await api.files.create(file=("in.jsonl", jsonl(1)), purpose="batch")
    body = {"input_file_id": upload.id, "endpoint": "/v1/chat/completions", **params}
    headers = {"Authorization": f"Bearer {KEY}"}
    batches = f"http://127.0.0.1:{balancer.inference_port}/v1/batches"
    async with harness.http.post(batches, json=body, headers=headers) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


async def test_listing_batches_keeps_to_its_bounds(harness: Harness, tmp_path: Path) -> None:
    """``limit=0`` and ``-1`` gave one batch; an unknown ``after`` gave the whole list."""
    balancer, _ = await fleet(harness, tmp_path)
    headers = {"Authorization": f"Bearer {KEY}"}
    batches = f"http://127.0.0.1:{balancer.inference_port}/v1/batches"
    for query, status, message in [
        ("?limit=0", 400, "limit must be from 1 to 100, got 0"),
        ("?limit=-1", 400, "limit must be from 1 to 100, got -1"),
        ("?limit=101", 400, "got 101"),
        ("?after=batch_nope", 404, "No such Batch object: batch_nope"),
    ]:
        async with harness.http.get(batches + query, headers=headers) as r:
            assert r.status == status, query
            assert message in (await r.json())["error"]["message"], query
    async with harness.http.get(batches + "?limit=100", headers=headers) as r:
        assert r.status == 200 and (await r.json())["data"] == []


def test_the_stop_says_it_waits_for_batch_lines_in_flight() -> None:
    """It said "nothing to wait for" with lines in flight, then waited for them."""
    from types import SimpleNamespace

    from corral.balancer.balancer import _waiting

    def balancer(clients: int, lines: int | None) -> Any:
        runner = SimpleNamespace(in_flight=lines)
        batches = None if lines is None else SimpleNamespace(runner=runner)
        return SimpleNamespace(in_flight=clients, batches=batches)

    assert _waiting(balancer(0, 4)) == "4 batch lines in flight to finish"
    assert _waiting(balancer(2, 1)) == "2 requests in flight and 1 batch line in flight to finish"
    assert _waiting(balancer(1, None)) == "1 request in flight to finish"
    assert _waiting(balancer(0, 0)) is None and _waiting(balancer(0, None)) is None


async def test_a_cancelled_batchs_lines_still_waiting_for_a_slot_are_dropped(
    harness: Harness, tmp_path: Path
) -> None:
    """Lines a server runs finish; lines waiting in the buffer could wait the batch
    timeout (600 s), then run after the cancel: they go at once, as not run."""
    # one slot, 10 tokens/s, 40 tokens a line: 4 s a line; three lines at once
    balancer, api = await fleet(harness, tmp_path, tps=10.0, slots=1, batch_concurrency=3)
    upload = await api.files.create(file=("in.jsonl", jsonl(6, max_tokens=40)), purpose="batch")
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await eventually(lambda: len(balancer.buffer) == 2, what="two lines waiting for the slot")
    await api.batches.cancel(batch.id)
    done = await finished(api, batch.id, within=8.0)  # the running line's 4 s, not 600
    assert done.status == "cancelled"
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 5), done
    assert len(balancer.buffer) == 0


async def test_a_tenant_turned_away_pauses_only_its_own_batches(
    harness: Harness, tmp_path: Path
) -> None:
    """A full share of the buffer (429) paused every tenant's batches: the oldest
    batch's tenant, refused again after each pause, kept another's waiting to its end.
    Now only its own batches pause, and the other's lines run meanwhile."""
    from corral.config.keys import parse_keys

    keys = tuple(parse_keys(
        '[[tenant]]\nname = "tight"\nkey = "sk-tight"\nmax_buffered = 1\n\n'
        '[[tenant]]\nname = "roomy"\nkey = "sk-roomy"\n'
    ))  # fmt: skip
    balancer = await harness.balancer(
        data_dir=tmp_path, tenant_keys=keys, queue="priority", batch_concurrency=4
    )
    _, port = await harness.sim(slots=1, tokens_per_second=40.0)  # 1 s a line
    await harness.agent(port, balancer)
    tight, roomy = client(harness, balancer, key="sk-tight"), client(harness, balancer, "sk-roomy")

    async def submit(api: openai.AsyncOpenAI, n: int, prefix: str) -> str:
        data = jsonl(n, max_tokens=40, prefix=prefix)
        upload = await api.files.create(file=("in.jsonl", data), purpose="batch")
        made = await api.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return made.id

    # tight's first lines: one runs, one waits, the others are turned away (429)
    first = await submit(tight, 6, "tight")
    await eventually(lambda: len(balancer.buffer) == 1, what="tight's line waiting")
    second = await submit(roomy, 2, "roomy")
    done = await finished(roomy, second, within=15.0)
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 0), done
    mid = await tight.batches.retrieve(first)
    # roomy's two lines ran after tight's first two, not after all six
    assert mid.status == "in_progress" and mid.request_counts.completed <= 4, mid
    await tight.batches.cancel(first)
    await finished(tight, first, within=10.0)


async def test_a_cancelled_batchs_line_retried_after_its_server_failed_is_dropped(
    harness: Harness, tmp_path: Path
) -> None:
    """A line whose first server failed while holding it waits for a slot again: a
    cancel drops it then too (it was counted as on a server, and ran after the cancel)."""
    import asyncio

    from support.harness import url

    balancer = await harness.balancer(data_dir=tmp_path, api_keys=(KEY,))
    _, slow = await harness.sim(name="b", slots=1, tokens_per_second=10.0)
    await harness.agent(slow, balancer, name="b")
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}  # 4 s

    async def occupy() -> int:
        async with harness.http.post(url(balancer, "/v1/chat/completions"), json=body,
                                     headers=auth) as r:  # fmt: skip
            await r.read()
            return r.status

    held = asyncio.create_task(occupy())
    await eventually(lambda: balancer.in_flight == 1, what="b's slot taken")
    # a: free, and crashes on the line (a query of death): the line goes back to wait
    _, crashing = await harness.sim(name="a", slots=4, crash_marker="KILL-ME")
    await harness.agent(crashing, balancer, name="a")
    ask = {"messages": [{"role": "user", "content": "KILL-ME"}], "max_tokens": 4}
    line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": ask}
    api = client(harness, balancer)
    upload = await api.files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch")
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await eventually(lambda: len(balancer.buffer) == 1, what="the line waiting again")
    retries = balancer.metrics.registry.get_sample_value("corral_retries_total")
    assert retries == 1, retries
    await api.batches.cancel(batch.id)
    done = await finished(api, batch.id, within=3.0)  # before b's slot frees
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 1), done
    assert await held == 200


async def test_lines_turned_away_together_pause_their_tenant_once(tmp_path: Path) -> None:
    """Four lines refused in one burst doubled the pause four times (0.25 s to 2 s); now
    they pause their tenant once, and only a refusal after that pause doubles it."""
    from corral.balancer.batches.runner import BatchRunner, Collected
    from corral.balancer.batches.store import Pending

    runner = BatchRunner(BatchStore(tmp_path))
    refused = Collected()
    refused.send(429, b"", b"{}")

    def line(index: int, tenant: str = "a") -> Pending:
        return Pending("batch_x", index, f"c{index}", "/v1/chat/completions", b"{}", tenant)

    for index in range(4):
        runner._retry_later(line(index), refused)
    runner._retry_later(line(0, tenant="b"), refused)
    assert runner._backoff == {"a": 0.25, "b": 0.25}
    runner._paused_until["a"] = 0.0  # a's pause is over; a line is refused again
    runner._retry_later(line(1), refused)
    assert runner._backoff == {"a": 0.5, "b": 0.25}

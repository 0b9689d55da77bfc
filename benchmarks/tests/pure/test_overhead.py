"""The overhead section's pure parts: the instant backend, wrk's figures, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comparison.common import SuiteEnv, SuiteError
from comparison.overhead import (
    FULL,
    MODEL,
    QUICK,
    REQUEST_BODY,
    SLOTS,
    STREAM_PATH,
    TOKENS,
    Measured,
    Row,
    WrkResult,
    backend_config,
    backend_files,
    chat_stream,
    check,
    findings,
    parse_wrk,
    setup_text,
    summarise,
    table,
    write_backend,
    wrk_script,
)
from comparison.pinned import cores_for, cpu_ticks
from corral.agent.runners.llamacpp import Fetched, interpret
from corral.balancer.metrics import last_counted_event, read_counts

# Captured from wrk 4.1.0 (Debian) running wrk_script() against the instant backend.
WRK_OK = """\
Running 1s test @ http://127.0.0.1:18556/v1/chat/completions
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   158.54us  267.22us   4.05ms   90.39%
    Req/Sec    11.82k     1.68k   14.35k    63.64%
  Latency Distribution
     50%   59.00us
     75%  113.00us
     90%  410.00us
     99%    1.31ms
  12934 requests in 1.10s, 90.60MB read
Requests/sec:  11750.06
Transfer/sec:     82.31MB
CORRAL_WRK {"requests":12934,"duration_us":1100760,"bytes":95000230,"p50_us":59.0,\
"p90_us":410.0,"p99_us":1306.0,"mean_us":158.54,"max_us":4053.0,"connect":0,"read":0,\
"write":0,"status":0,"timeout":0}
"""

# The same against a path the backend does not serve: every answer a 404.
WRK_404 = """\
Running 1s test @ http://127.0.0.1:18556/nope
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   135.49us  288.88us   3.35ms   92.70%
    Req/Sec    30.82k     6.31k   42.73k    63.64%
  Latency Distribution
     50%   56.00us
     75%   69.00us
     90%  276.00us
     99%    1.59ms
  33662 requests in 1.10s, 9.89MB read
  Non-2xx or 3xx responses: 33662
Requests/sec:  30619.44
Transfer/sec:      8.99MB
CORRAL_WRK {"requests":33662,"duration_us":1099367,"bytes":10367896,"p50_us":56.0,\
"p90_us":276.0,"p99_us":1588.0,"mean_us":135.49,"max_us":3349.0,"connect":0,"read":0,\
"write":0,"status":33662,"timeout":0}
"""


def test_parse_wrk_reads_the_summary_line() -> None:
    r = parse_wrk(WRK_OK)
    assert (r.requests, r.bytes) == (12934, 95000230)
    assert (r.p50_us, r.p90_us, r.p99_us, r.max_us) == (59.0, 410.0, 1306.0, 4053.0)
    assert r.seconds == pytest.approx(1.10076)
    # the same requests/s wrk printed, from exact figures
    assert r.requests_per_second == pytest.approx(11750.06, abs=0.01)
    assert r.errors == 0


def test_parse_wrk_counts_error_answers() -> None:
    r = parse_wrk(WRK_404)
    assert r.bad_status == r.requests == 33662
    assert r.socket_errors == 0 and r.errors == 33662


def test_parse_wrk_without_a_summary_says_so() -> None:
    with pytest.raises(SuiteError, match="unable to connect"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    with pytest.raises(SuiteError, match="cannot read wrk's summary"):
        parse_wrk('CORRAL_WRK {"requests": 1}\n')


def test_wrk_script_posts_the_body_and_prints_the_summary() -> None:
    script = wrk_script()
    assert 'wrk.method = "POST"' in script
    assert f"wrk.body = [[{REQUEST_BODY}]]" in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert "done = function(summary, latency, requests)" in script
    assert "CORRAL_WRK " in script and "latency:percentile(99)" in script
    assert json.loads(REQUEST_BODY)["stream"] is True
    with pytest.raises(SuiteError, match="Lua long string"):
        wrk_script('{"x": [[1]]}')


def _events(stream: str) -> list[str]:
    assert stream.endswith("\n\n")
    return [e.removeprefix("data: ") for e in stream[:-2].split("\n\n")]


def test_the_stream_is_a_llama_server_chat_stream() -> None:
    events = _events(chat_stream(5))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content) == 5
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # Corral's relay finds the token count in the last event, as with llama-server
    counted = last_counted_event(chat_stream().encode())
    assert counted is not None and read_counts(counted).generated == TOKENS


def test_corral_agent_reads_the_backend_as_a_ready_llama_server() -> None:
    files = backend_files(slots=3)
    status = interpret(
        Fetched(200, json.loads(files["/health"])),
        Fetched(200, json.loads(files["/props"])),
        Fetched(200, json.loads(files["/slots"])),
        Fetched(200, json.loads(files["/v1/models"])),
    )
    assert status.condition == "ready"
    assert (status.slots_total, status.slots_processing) == (3, 0)
    assert status.model == MODEL and status.issues == []


def test_write_backend_puts_each_answer_at_its_path(tmp_path: Path) -> None:
    write_backend(tmp_path, tokens=2, slots=2)
    assert json.loads((tmp_path / "health").read_text()) == {"status": "ok"}
    assert len(json.loads((tmp_path / "slots").read_text())) == 2
    assert (tmp_path / STREAM_PATH.lstrip("/")).read_text() == chat_stream(2)


def test_backend_config(tmp_path: Path) -> None:
    conf = backend_config(8000, tmp_path, tmp_path / "root")
    assert conf.count("{") == conf.count("}")
    assert "worker_processes 1;" in conf and "listen 127.0.0.1:8000" in conf
    assert f"root {tmp_path / 'root'};" in conf
    for path in ("/health", "/slots", "/props", "/v1/models"):
        assert f"location = {path} {{ default_type application/json; }}" in conf
    # the stream: POST served from a file, chunked (ssi drops the Content-Length)
    stream = conf.split(f"location = {STREAM_PATH} {{")[1].split("}")[0]
    assert "default_type text/event-stream;" in stream
    assert "ssi on;" in stream and "ssi_types text/event-stream;" in stream
    assert "error_page 405 =200 $uri;" in stream
    assert "access_log off;" in conf and "/var/" not in conf  # runs as any user
    assert "user " not in conf
    assert backend_config(8000, tmp_path, tmp_path, user="root").startswith("user root;")


def test_cores() -> None:
    two = cores_for(2)
    assert two.proxy == "0" and two.load == two.backend == "1"
    four = cores_for(4)
    assert len({four.proxy, four.load, four.backend}) == 3


def test_cpu_ticks() -> None:
    stat = (
        "cpu  100 0 50 800 10 0 5 0 0 0\n"
        "cpu0 60 0 30 400 5 0 3 0 0 0\n"
        "cpu1 40 0 20 400 5 0 2 0 0 0\n"
    )
    assert cpu_ticks(stat, 1) == (40 + 20 + 2, 40 + 20 + 400 + 5 + 2)
    with pytest.raises(SuiteError, match="no line for core 7"):
        cpu_ticks(stat, 7)


def _row(name: str, p50: float, p99: float, rps: float, busy: float | None) -> Row:
    cpu = None if busy is None else busy * 1e6 / rps
    return Row(name, p50, p99, rps, rps * TOKENS, busy, cpu, 1.0, 0, 8000.0)


DIRECT = _row("direct", 50, 300, 20000, None)
NGINX = _row("nginx", 120, 500, 10000, 0.5)
SLOW = _row("corral", 1000, 3000, 1000, 1.0)


def test_table_has_a_row_per_path_with_added_latency() -> None:
    md = table([DIRECT, NGINX, SLOW])
    lines = md.splitlines()
    assert len(lines) == 5
    assert lines[2].startswith("| direct (no proxy) | 50 | 300 | - | - | 20,000 | 640,000 | -")
    assert lines[3].startswith("| nginx | 120 | 500 | +70 | +200 | 10,000 | 320,000 | 50% | 50 |")
    assert "| **Corral** | 1,000 | 3,000 | +950 | +2,700 | 1,000 | 32,000 | 100% | 1,000 |" in md


def test_findings_say_where_corral_loses_and_why() -> None:
    text = "\n".join(findings([DIRECT, NGINX, SLOW]))
    assert "Corral adds 950 µs at p50 and 2,700 µs at p99; nginx adds 70 µs and 200 µs" in text
    assert "Corral sustains 1,000, 0.10x nginx's 10,000" in text
    assert "1,000 µs of its core on each request, 20.00x nginx's 50 µs" in text
    assert "**Corral loses to nginx here.**" in text and "Python" in text
    assert "Corral's core was 100% busy" in text
    assert "nginx's core was only 50% busy" in text  # nginx's figure is a floor


def test_findings_do_not_claim_a_loss_that_did_not_happen() -> None:
    fast = _row("corral", 100, 400, 12000, 0.95)
    saturated = _row("nginx", 120, 500, 10000, 0.99)
    text = "\n".join(findings([DIRECT, saturated, fast]))
    assert "loses" not in text and "only" not in text


def _measured(name: str, bad_status: int = 0, size: int = 8000) -> Measured:
    run = WrkResult(10, 1.0, 10 * size, 1.0, 1.0, 1.0, 1.0, 1.0, 0, bad_status)
    return Measured(name, [run], [run], [0.001], [0.5], [1.0])


def test_summarise_takes_cpu_per_request_from_cpu_time_and_requests() -> None:
    row = summarise(_measured("nginx"))
    assert row.cpu_per_request_us == pytest.approx(100.0)  # 1 ms over 10 requests
    assert row.proxy_busy == 0.5 and row.load_busy == 1.0
    assert row.requests_per_second == 10.0 and row.tokens_per_second == 10.0 * TOKENS
    assert row.bytes_per_response == 8000.0


def test_check_refuses_error_answers_and_cut_streams() -> None:
    good = _measured("nginx")
    check([good], [summarise(good)], 8000, Path("wrk.log"))
    bad = _measured("nginx", bad_status=3)
    with pytest.raises(SuiteError, match="nginx: 6 answers were not 2xx"):
        check([bad], [summarise(bad)], 8000, Path("wrk.log"))
    short = _measured("corral", size=100)
    with pytest.raises(SuiteError, match="streams were cut short"):
        check([short], [summarise(short)], 8000, Path("wrk.log"))


def test_slots_exceed_the_load_generators_connections() -> None:
    assert max(FULL.connections, QUICK.connections) < SLOTS


def test_setup_text_says_how_it_was_pinned(tmp_path: Path) -> None:
    two = SuiteEnv(out_dir=tmp_path, docs_dir=tmp_path, cores=2, work_dir=tmp_path)
    text = "\n".join(setup_text(QUICK, cores_for(2), two, 7000))
    assert "pinned to core 0 (taskset); wrk and the backend share core 1" in text
    assert f"wrk -t1 -c{QUICK.connections} -d{QUICK.throughput_seconds}s" in text
    assert "wrk -t1 -c1" in text and "upper bound" in text  # bursts, not paced tokens
    one = SuiteEnv(out_dir=tmp_path, docs_dir=tmp_path, cores=1, work_dir=tmp_path)
    assert "nothing is pinned" in "\n".join(setup_text(QUICK, cores_for(1), one, 7000))

"""benchmarks/idle_slots.py: free slots while requests waited, from a request log."""

from idle_slots import idle_while_waiting, main, spans


def line(end: str, wait: float, total: float) -> str:
    return (
        f"2026-11-29 {end} INFO    corral.access: abc POST /v1/chat/completions 200 "
        f"model=- agent=a route=slots wait={wait:.3f}s ttfb=0.1s total={total:.3f}s\n"
    )


def test_a_request_waiting_beside_a_free_slot_is_counted():
    # one slot: A runs 0-10 s; B arrives at 2 s and waits until 10 s (none free: 0);
    # C arrives at 21 s and waits 1 s though nothing runs (1 free slot-second)
    log = [
        line("00:00:10,000", 0.0, 10.0),
        line("00:00:20,000", 8.0, 18.0),
        "2026-11-29 00:00:21,000 INFO    corral.balancer: not a request\n",
        line("00:00:23,000", 1.0, 2.0),
    ]
    requests = spans(log)
    assert len(requests) == 3
    r = idle_while_waiting(requests, slots=1)
    assert r["span_s"] == 23.0
    assert abs(r["idle_slot_s_while_waiting"] - 1.0) < 1e-6
    assert abs(r["mean_waiting"] - 9.0 / 23.0) < 1e-6


def test_no_request_line_is_an_error_not_a_traceback(tmp_path, capsys):
    log = tmp_path / "balancer.log"
    log.write_text("nothing here\n")
    assert main([str(log)]) == 2
    assert "no corral.access line" in capsys.readouterr().err

"""benchmarks/shared_queue.py: Corral's core keeps every slot busy while requests wait
(it starts each request when one FIFO queue in front of all slots would), and one queue
has the lower p99 and mean where round robin's queues per server have the lucky
arrivals (section 2's figures)."""

from __future__ import annotations

import statistics

import pytest

import shared_queue as q
from corral.bench.stats import percentile


@pytest.mark.parametrize(("load", "seed"), [(1.5, 1), *((0.9, s) for s in range(1, 9))])
def test_corral_starts_every_request_when_one_fifo_queue_would(load, seed):
    # the check a Corral fault fails: a slot counted busy after its request ended, or
    # phantom load from elsewhere, leaves it idle while the buffer holds a request (the
    # fleet counting what was in flight when a report arrived, not the most over the
    # read, fails seeds 3 and 7)
    jobs, _ = q.jobs(load, 45.0, seed)
    corral, central = q.corral(jobs, seed=seed), q.central(jobs)
    assert corral.starts == pytest.approx(central.starts, abs=1e-9)
    assert corral.idle_slot_s() == pytest.approx(0.0, abs=1e-9)


def test_the_check_fails_for_slots_counted_busy_after_their_request_ended():
    # servers that show a finished slot busy 0.5 s longer: the fleet counts it as load
    # from elsewhere until the next report, and requests wait beside the free slot
    jobs, _ = q.jobs(0.9, 45.0, 1)
    lagging = q.corral(jobs, lag=0.5)
    assert lagging.starts != pytest.approx(q.central(jobs).starts, abs=1e-9)
    assert lagging.idle_slot_s() > 1.0


@pytest.mark.parametrize("run", list(q.RUNS.values()))
def test_no_request_is_lost_and_none_starts_before_it_arrives(run):
    jobs, _ = q.jobs(1.5, 20.0, 3)
    served = run(jobs)
    assert len(served.starts) == len(jobs) > 20
    assert all(s >= j.arrived for j, s in zip(jobs, served.starts, strict=True))


def test_fifo_starts_by_hand():
    # two slots; C arrives at 1 s while A (to 4 s) and B (to 3 s) run: it takes B's slot
    jobs = [q.Job(0.0, 1.0, 3.0), q.Job(0.5, 0.5, 2.0), q.Job(1.0, 0.0, 1.0)]
    assert q.fifo_starts(jobs, 2) == [0.0, 0.5, 3.0]
    assert q.round_robin(jobs).starts == (0.0, 0.5, 1.0)  # C goes to A's idle twin


def test_one_queue_has_the_lower_p99_and_mean_and_round_robin_the_lucky_arrivals():
    # section 2's own trace: one queue's p50 is higher, its mean and p99 lower
    jobs, capacity = q.jobs(0.9, 45.0, 1)
    assert capacity == pytest.approx(2.5, rel=0.01)  # section 2's measured capacity
    fifo, rr = q.central(jobs).ttft, q.round_robin(jobs).ttft
    assert percentile(fifo, 0.5) > percentile(rr, 0.5)
    assert statistics.fmean(fifo) < statistics.fmean(rr)
    assert percentile(fifo, 0.99) < percentile(rr, 0.99)
    # and over seeds: the lower p99 nearly always, the higher p50 only sometimes
    rows = {(r.load, r.contender): r for r in q.measure([0.9], 10, 45.0, 1.25, 0.0)}
    corral = rows[0.9, "corral"]
    assert corral.p99_below_rr >= 0.8
    assert corral.p50_above_rr < 0.5
    assert corral.median.idle == 0 and rows[0.9, "rr"].median.idle > 0


def test_main_prints_the_table_and_refuses_nonsense(capsys):
    assert q.main(["--seeds", "2", "--loads", "0.9", "--duration", "10"]) == 0
    out = capsys.readouterr().out
    assert "| 90% | corral |" in out and "| 90% | rr |" in out
    with pytest.raises(SystemExit):
        q.main(["--loads", "fast"])


def test_a_trace_longer_than_the_calls_drawn_is_refused_not_cut(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        q.main(["--seeds", "1", "--loads", "1.5", "--duration", "3000"])
    assert "more than the 5000 calls drawn" in capsys.readouterr().err

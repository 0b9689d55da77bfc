"""prefix_cost.py answers as llama-server does: ``prompt_n`` + ``cache_n`` is the prompt."""

from __future__ import annotations

import random

import pytest

import prefix_cost
from corral.core.routing import PrefixPolicy


def test_an_answer_reports_the_uncached_rest_as_processed() -> None:
    timings = prefix_cost.answer_timings(32 * 1024, 3000)
    assert (timings.prompt_n, timings.cache_n) == (8192 - 3000, 3000)
    assert timings.prompt_tokens == 8192
    assert prefix_cost.answer_timings(400, 0).prompt_n == 100


@pytest.mark.parametrize("cache_n", [-1, 101])
def test_cached_tokens_outside_the_prompt_are_refused(cache_n: int) -> None:
    with pytest.raises(ValueError, match="outside a prompt of 100 tokens"):
        prefix_cost.answer_timings(400, cache_n)


def test_a_correct_prediction_answered_so_leaves_the_index_whole(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmark times the path of a correct prediction: with its answers the index
    never drops what it predicted (a prompt_n that counted the cached tokens again made
    every hit look over-predicted and corrected the index on every later turn)."""
    index_type = type(PrefixPolicy(clock=lambda: 0.0).index)
    forget = index_type.forget_older
    dropped: list[object] = []

    def counting(self: object, *args: object, **kwargs: object) -> object:
        dropped.append(args)
        return forget(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(index_type, "forget_older", counting)
    assert prefix_cost.main(["--backends", "20", "--requests", "200", "--prompt-kib", "8"]) == 0
    assert "pick+update" in capsys.readouterr().out
    assert dropped == []


def test_it_times_a_control_of_constant_work_beside_the_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert prefix_cost.main(["--backends", "20", "--requests", "200", "--prompt-kib", "8"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if " p50 " in line}
    control, requests = float(lines["control"][2]), float(lines["pick+update"][2])
    assert requests / 2 < control < requests * 2  # sized to a request's median
    assert "p99/p50" in " ".join(lines["control"])


def test_the_control_does_the_same_work_each_time_and_is_sized() -> None:
    control = prefix_cost.Control(random.Random(1), 10)
    assert control() == control() and len(control.keys) == 10
    assert len(control.sized(5.0).keys) >= 1
    assert len(control.sized(1e9).keys) == len(control.table)  # never more than it has


def test_with_a_host_cache_the_fill_reaches_the_larger_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 20 backends: 4 x 4,096 tokens of slots (64 blocks of 1 KiB at 4 bytes a token),
    # and 256 MiB of host cache at 128 KiB a token, 2,048 tokens more (8 blocks)
    argv = ["--backends", "20", "--requests", "50", "--prompt-kib", "8"]
    assert prefix_cost.main([*argv, "--host-cache", "256"]) == 0
    out = capsys.readouterr().out
    assert "a 256 MiB host cache each" in out
    assert "index: 1,440 entries over 20 backends" in out


def test_a_negative_host_cache_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        prefix_cost.main(["--host-cache", "-1"])
    assert exit_.value.code == 2
    assert "--host-cache must be 0 or more MiB, got -1" in capsys.readouterr().err


def test_half_the_prompts_are_later_turns_of_recent_ones() -> None:
    rng = random.Random(1)
    earlier = [rng.randbytes(64) for _ in range(10)]
    out = prefix_cost.turns(rng, earlier, 40, recent=4)
    assert all(len(text) == 64 for text in out)
    seen = list(earlier)
    for i, text in enumerate(out):
        window = [t[:32] for t in seen[-4:]]
        assert (text[:32] in window) == bool(i % 2), i  # odd: a later turn of a recent one
        seen.append(text)
    with pytest.raises(ValueError, match="1 or more earlier prompts"):
        prefix_cost.turns(rng, [], 1, recent=4)


def test_the_later_turns_are_sent_where_their_prefix_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The timed requests take both paths: half are predicted to reuse their first half
    (answers whose prefill time did not grow with the tokens read taught the policy
    that reuse never pays, and it timed only requests that reused nothing)."""
    assert prefix_cost.main(["--backends", "20", "--requests", "200", "--prompt-kib", "8"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "routes:" in line)
    reused = int(line.split()[1])
    assert 90 <= reused <= 100, line
    assert "prefix" in line
    kinds = [line for line in out.splitlines() if ", p50: pick " in line]
    assert [k.split()[0] for k in kinds] == [str(reused), str(200 - reused)], kinds
    assert all("dispatch" in k and "end" in k and "pick+update" in k for k in kinds)

"""Seeded workloads and arrival traces repeat exactly, and have the shapes they claim."""

from __future__ import annotations

import itertools
import statistics

import pytest

from corral.bench.workload import (
    Workload,
    WorkloadError,
    WorkloadSpec,
    history_words,
    output_length,
    poisson_arrivals,
    with_answers,
)


@pytest.mark.parametrize("shape", ["fixed", "heavy-tail", "multi-turn"])
def test_a_seeded_workload_repeats_exactly(shape: str) -> None:
    spec = WorkloadSpec(shape=shape, stream_share=0.5, seed=7)  # type: ignore[arg-type]
    assert Workload(spec).take(200) == Workload(spec).take(200)


def test_another_seed_gives_other_requests() -> None:
    a = Workload(WorkloadSpec(shape="heavy-tail", seed=1)).take(50)
    b = Workload(WorkloadSpec(shape="heavy-tail", seed=2)).take(50)
    assert [c.max_tokens for c in a] != [c.max_tokens for c in b]


def test_fixed_lengths_and_prompt_size() -> None:
    calls = Workload(WorkloadSpec(prompt_tokens=20, output_tokens=33)).take(20)
    assert {c.max_tokens for c in calls} == {33}
    assert all(len(c.prompt.split()) == 20 + 1 for c in calls)  # "Request" "N:" + words
    assert [c.index for c in calls] == list(range(20))


def test_heavy_tail_is_mostly_short_with_a_few_very_long() -> None:
    spec = WorkloadSpec(shape="heavy-tail", output_tokens=50, max_output_tokens=5000, seed=3)
    lengths = [c.max_tokens for c in Workload(spec).take(5000)]
    median = statistics.median(lengths)
    assert 40 <= median <= 60
    longest = sorted(lengths)[-50:]  # the top 1%
    assert min(longest) > 10 * median
    assert max(lengths) <= 5000 and min(lengths) >= 1


def test_heavy_tail_respects_the_cap() -> None:
    spec = WorkloadSpec(shape="heavy-tail", output_tokens=100, max_output_tokens=120)
    assert max(c.max_tokens for c in Workload(spec).take(500)) == 120


def test_stream_share_is_honoured() -> None:
    calls = Workload(WorkloadSpec(stream_share=0.25, seed=5)).take(4000)
    share = sum(c.stream for c in calls) / len(calls)
    assert 0.22 < share < 0.28
    assert all(c.stream for c in Workload(WorkloadSpec(stream_share=1.0)).take(50))
    assert not any(c.stream for c in Workload(WorkloadSpec(stream_share=0.0)).take(50))


def test_multi_turn_histories_grow_and_share_their_prefix() -> None:
    spec = WorkloadSpec(shape="multi-turn", sessions=3, turns=4, seed=11)
    calls = Workload(spec).take(60)
    by_session: dict[int, list] = {}
    for call in calls:
        by_session.setdefault(call.session, []).append(call)
    for session_calls in by_session.values():
        assert [c.turn for c in session_calls] == list(range(len(session_calls)))
        assert len(session_calls) <= 4
        for earlier, later in itertools.pairwise(session_calls):
            # the later call repeats the whole earlier history, then the answer, then more
            assert later.messages[: len(earlier.messages)] == earlier.messages
            assert later.messages[len(earlier.messages)].role == "assistant"
            assert len(later.messages) == len(earlier.messages) + 2
        assert session_calls[0].messages[0].role == "system"
    assert len(by_session) > 3  # sessions end after 4 turns and new ones start


@pytest.mark.parametrize(("turn_tokens", "words"), [(None, 100), (20, 20)])
def test_multi_turn_user_turns_have_turn_tokens_words(turn_tokens: int | None, words: int) -> None:
    spec = WorkloadSpec(shape="multi-turn", prompt_tokens=400, turn_tokens=turn_tokens, seed=2)
    for call in Workload(spec).take(30):
        assert len(call.messages[-1].content.split()) == words  # the new user turn
        assert call.messages[-1].role == "user"
    assert call.messages[0].role == "system"


def test_poisson_arrivals_have_the_asked_rate_and_repeat() -> None:
    times = list(itertools.islice(poisson_arrivals(50.0, seed=4), 20000))
    assert times == list(itertools.islice(poisson_arrivals(50.0, seed=4), 20000))
    assert all(b > a for a, b in itertools.pairwise(times))
    rate = len(times) / times[-1]
    assert 48 < rate < 52
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # exponential gaps: the standard deviation equals the mean
    assert statistics.stdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.05)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"shape": "zipf"}, "unknown workload"),
        ({"output_tokens": 0}, "output tokens must be >= 1"),
        ({"output_tokens": 300, "max_output_tokens": 200}, "above the cap"),
        ({"stream_share": 1.5}, "between 0 and 1"),
        ({"tail_sigma": -1}, "tail sigma"),
        ({"turn_tokens": 0}, "turn tokens must be >= 1"),
        ({"history": "imagined"}, "unknown history"),
    ],
)
def test_bad_specs_say_what_is_wrong(overrides: dict, words: str) -> None:
    with pytest.raises(WorkloadError, match=words):
        WorkloadSpec(**overrides)


def test_bad_rate() -> None:
    with pytest.raises(WorkloadError, match="positive"):
        next(poisson_arrivals(0, seed=1))


def test_output_length_fixed_ignores_the_generator() -> None:
    import random

    assert output_length(random.Random(1), WorkloadSpec(output_tokens=9)) == 9


def test_shared_prefix_groups_share_a_long_document_and_ask_short_questions() -> None:
    spec = WorkloadSpec(shape="shared-prefix", groups=3, users=5, prefix_tokens=200, seed=4)
    calls = Workload(spec).take(300)
    documents: dict[int, set[str]] = {}
    for call in calls:
        system, question = call.messages
        documents.setdefault(call.group, set()).add(system.content)
        assert len(system.content.split()) == 200 and len(question.content.split()) == 32
        assert call.group * 5 <= call.session < (call.group + 1) * 5  # a user of the group
    assert sorted(documents) == [0, 1, 2]
    assert all(len(docs) == 1 for docs in documents.values())  # one document per group
    assert len({c.session for c in calls}) == 15


def test_the_no_sharing_control_has_the_same_lengths_and_nothing_to_reuse() -> None:
    shared = Workload(WorkloadSpec(shape="shared-prefix", prefix_tokens=100)).take(50)
    alone = Workload(WorkloadSpec(shape="no-sharing", prefix_tokens=100)).take(50)
    assert [history_words(c) for c in alone] == [history_words(c) for c in shared]
    assert len({c.messages[0].content for c in alone}) == 50
    assert len({c.session for c in alone}) == 50


def test_multi_turn_histories_pass_1000_tokens_at_the_prefix_benchmark_scale() -> None:
    # the scale of benchmarks/comparison/prefix.py: long enough for a cache to matter
    spec = WorkloadSpec(
        shape="multi-turn", prompt_tokens=400, output_tokens=64, turns=8, sessions=8
    )
    calls = Workload(spec).take(200)
    last_turns = [history_words(c) for c in calls if c.turn == 7]
    assert last_turns and min(last_turns) > 1000
    # and the default stays small (a quick benchmark, not a cache test)
    assert max(history_words(c) for c in Workload(WorkloadSpec(shape="multi-turn")).take(50)) < 1000


@pytest.mark.parametrize("shape", ["heavy-tail", "multi-turn", "shared-prefix"])
def test_a_salt_keeps_two_runs_from_sharing_prompts_and_nothing_else(shape):
    # two contenders sent the same calls: without a salt the second finds the first's
    # prompts in the servers' caches; with one, the runs share no prompt prefix, while
    # within a run prompts share what they did, and lengths and answers are the same
    spec = WorkloadSpec(shape=shape, sessions=2, turns=3, groups=2, users=2, seed=3)
    plain = Workload(spec).take(12)
    a, b = Workload(spec, salt="[a 0]").take(12), Workload(spec, salt="[b 1]").take(12)
    for p, x, y in zip(plain, a, b, strict=True):
        assert x.prompt == "[a 0] " + p.prompt and y.prompt == "[b 1] " + p.prompt
        assert (x.max_tokens, x.session, x.turn, x.group) == (
            p.max_tokens, p.session, p.turn, p.group,
        )  # fmt: skip
        assert [m.role for m in x.messages] == [m.role for m in p.messages]

    def shared(u: str, v: str) -> int:  # characters in common at the start
        return next(
            (k for k, (c, d) in enumerate(zip(u, v, strict=False)) if c != d), min(len(u), len(v))
        )

    for i, j in itertools.combinations(range(12), 2):  # within a run: as without a salt
        assert shared(a[i].prompt, a[j].prompt) == 6 + shared(plain[i].prompt, plain[j].prompt)
        assert shared(a[i].prompt, b[j].prompt) == 1  # across runs: the "[" only


def test_with_answers_puts_the_served_words_in_place_of_the_planned_ones() -> None:
    spec = WorkloadSpec(shape="multi-turn", sessions=1, turns=4, seed=4)
    third = Workload(spec).take(3)[2]  # turn 2: two answers in its history
    planned = [m.content for m in third.messages if m.role == "assistant"]
    served = with_answers(third, ["first served", "second served"])
    assert [m.content for m in served.messages if m.role == "assistant"] == [
        "first served",
        "second served",
    ]
    assert [m.role for m in served.messages] == [m.role for m in third.messages]
    assert served.messages[-1] == third.messages[-1] and served.index == third.index
    kept = with_answers(third, [None, "second served"])  # a failed turn keeps its plan
    assert [m.content for m in kept.messages if m.role == "assistant"] == [
        planned[0],
        "second served",
    ]
    assert with_answers(third, []) is third

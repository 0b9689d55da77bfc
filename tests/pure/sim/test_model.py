"""The simulator's pure model: speed, slots, plans, fake tokens. No event loop."""

from __future__ import annotations

import math

import pytest

from corral.sim.model import (
    ContextExceeded,
    Job,
    Plan,
    SlotError,
    SlotTable,
    SlotView,
    SpeedModel,
    Ticket,
    Timings,
    Vocab,
    count_tokens,
    embed,
    plan_generation,
    render_chat,
    token_piece,
)

# --------------------------------------------------------------------------- speed


def test_a_lone_slot_decodes_at_the_configured_speed() -> None:
    speed = SpeedModel(tokens_per_second=50.0, slowdown=0.1)
    assert speed.slot_speed(1) == 50.0
    assert speed.step_delay(1) == pytest.approx(0.02)


def test_busy_slots_slow_each_other_but_total_throughput_grows() -> None:
    speed = SpeedModel(tokens_per_second=50.0, slowdown=0.1)
    assert speed.step_delay(3) == pytest.approx(1.2 / 50)
    assert speed.slot_speed(4) == pytest.approx(50 / 1.3)
    throughputs = [speed.throughput(busy) for busy in range(1, 9)]
    assert throughputs == sorted(throughputs)
    assert throughputs[-1] < 8 * 50


def test_without_slowdown_slots_do_not_interfere() -> None:
    speed = SpeedModel(tokens_per_second=10.0, slowdown=0.0)
    assert speed.step_delay(8) == speed.step_delay(1) == pytest.approx(0.1)


def test_prompt_delay_is_proportional_to_prompt_length() -> None:
    speed = SpeedModel(prompt_tokens_per_second=1000.0)
    assert speed.prompt_delay(0) == 0.0
    assert speed.prompt_delay(500) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tokens_per_second": 0.0},
        {"tokens_per_second": -1.0},
        {"tokens_per_second": math.inf},
        {"slowdown": -0.5},
        {"prompt_tokens_per_second": 0.0},
    ],
)
def test_nonsense_speeds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SpeedModel(**kwargs)


def test_a_step_needs_at_least_one_busy_slot() -> None:
    with pytest.raises(ValueError, match="busy must be >= 1"):
        SpeedModel().step_delay(0)


# --------------------------------------------------------------------------- slots


def _job(n_predict: int = 10) -> Job:
    return Job(n_prompt=5, n_predict=n_predict, params={"n_predict": n_predict})


def test_submissions_take_the_lowest_free_slots_then_queue() -> None:
    table = SlotTable(2)
    assert table.submit(_job()) == Ticket(task=0, slot=0)
    assert table.submit(_job()) == Ticket(task=1, slot=1)
    assert table.submit(_job()) == Ticket(task=2, slot=None)
    assert table.submit(_job()) == Ticket(task=3, slot=None)
    assert (table.busy, table.free, table.queued, table.queue) == (2, 0, 2, (2, 3))
    assert repr(table) == "<SlotTable slots 2/2 busy, 2 queued>"


def test_a_released_slot_goes_to_the_oldest_waiting_task() -> None:
    table = SlotTable(2)
    for _ in range(4):
        table.submit(_job())
    assert table.release(1) == Ticket(task=2, slot=1)
    assert table.slot(1).task == 2
    assert table.release(0) == Ticket(task=3, slot=0)
    assert table.queue == ()
    assert table.release(1) is None
    assert table.release(0) is None
    assert table.slots == (SlotView(id=0), SlotView(id=1))


def test_a_cancelled_task_leaves_the_queue_and_is_skipped() -> None:
    table = SlotTable(1)
    table.submit(_job())
    table.submit(_job())
    table.submit(_job())
    table.cancel(1)
    assert table.queue == (2,)
    assert table.release(0) == Ticket(task=2, slot=0)


def test_a_busy_slot_shows_its_task_and_progress() -> None:
    table = SlotTable(2)
    table.submit(_job(n_predict=10))
    table.decode(0)
    table.decode(0, 3)
    view = table.slot(0)
    assert view == SlotView(
        id=0, task=0, n_prompt=5, n_predict=10, n_decoded=4, params={"n_predict": 10}
    )
    assert view.is_processing
    assert view.n_remain == 6
    assert not table.slot(1).is_processing


def test_an_unlimited_job_has_no_remaining_count() -> None:
    table = SlotTable(1)
    table.submit(_job(n_predict=-1))
    table.decode(0, 1000)
    assert table.slot(0).n_remain == -1


def test_illegal_transitions_raise_and_change_nothing() -> None:
    table = SlotTable(2)
    table.submit(_job(n_predict=2))
    table.submit(_job())
    table.submit(_job())
    before = (table.slots, table.queue)
    with pytest.raises(SlotError, match="not busy"):
        SlotTable(1).release(0)
    with pytest.raises(SlotError, match="no slot 7"):
        table.release(7)
    with pytest.raises(SlotError, match="not waiting"):
        table.cancel(0)  # it holds a slot, it is not waiting
    with pytest.raises(SlotError, match="over its budget"):
        table.decode(0, 3)
    with pytest.raises(SlotError):
        table.decode(0, -1)
    assert (table.slots, table.queue) == before
    idle = SlotTable(1)
    with pytest.raises(SlotError, match="not busy"):
        idle.decode(0)
    assert idle.slots == (SlotView(id=0),)


def test_a_server_has_at_least_one_slot() -> None:
    with pytest.raises(ValueError):
        SlotTable(0)


# --------------------------------------------------------------------------- plans


def test_the_text_is_numbered_words_up_to_the_budget() -> None:
    plan = plan_generation(n_predict=4, n_prompt=3, n_ctx=100)
    assert plan.pieces == ("tok0", " tok1", " tok2", " tok3")
    assert plan.text == "tok0 tok1 tok2 tok3"
    assert (plan.n_decoded, plan.stop_type, plan.finish_reason) == (4, "limit", "length")


def test_the_context_caps_the_budget() -> None:
    assert plan_generation(n_predict=50, n_prompt=90, n_ctx=100).n_decoded == 10
    assert plan_generation(n_predict=-1, n_prompt=90, n_ctx=100).n_decoded == 10


def test_a_prompt_that_fills_the_context_is_refused() -> None:
    with pytest.raises(ContextExceeded, match=r"request \(100 tokens\) exceeds .* \(100 tokens\)"):
        plan_generation(n_predict=1, n_prompt=100, n_ctx=100)


def test_end_of_sequence_stops_early_with_reason_stop() -> None:
    plan = plan_generation(n_predict=10, n_prompt=1, n_ctx=100, eos_after=3)
    assert plan == Plan(("tok0", " tok1", " tok2"), "eos")
    assert plan.finish_reason == "stop"
    # A budget shorter than the answer still ends at the limit.
    assert plan_generation(n_predict=2, n_prompt=1, n_ctx=100, eos_after=3).stop_type == "limit"


def test_a_stop_word_cuts_the_text_before_it() -> None:
    plan = plan_generation(n_predict=10, n_prompt=1, n_ctx=100, stop=["nope", "tok2"])
    assert plan.text == "tok0 tok1 "
    assert plan.pieces == ("tok0", " tok1", " ")  # the token holding the word was decoded
    assert (plan.stop_type, plan.stopping_word, plan.finish_reason) == ("word", "tok2", "stop")


def test_a_stop_word_spanning_tokens_trims_the_earlier_ones() -> None:
    plan = plan_generation(n_predict=10, n_prompt=1, n_ctx=100, stop=["1 tok2"])
    assert plan.text == "tok0 tok"
    assert plan.pieces == ("tok0", " tok", "")
    assert plan.n_decoded == 3


def test_the_earliest_stop_word_wins_and_empty_ones_are_ignored() -> None:
    plan = plan_generation(n_predict=10, n_prompt=1, n_ctx=100, stop=["", "tok3", " tok3"])
    assert plan.text == "tok0 tok1 tok2"
    assert plan.stopping_word == " tok3"


def test_a_zero_budget_decodes_nothing() -> None:
    assert plan_generation(n_predict=0, n_prompt=1, n_ctx=10) == Plan((), "limit")


# --------------------------------------------------------------------------- text


def test_pieces_join_into_the_text() -> None:
    assert "".join(token_piece(i) for i in range(3)) == "tok0 tok1 tok2"


def test_tokenize_splits_words_and_detokenize_restores_them() -> None:
    vocab = Vocab()
    ids = vocab.tokenize("Hello  world,\nhi ")
    assert len(ids) == count_tokens("Hello  world,\nhi ") == 4
    assert vocab.detokenize(ids) == "Hello  world,\nhi "
    assert Vocab().tokenize("Hello  world,\nhi ") == ids  # the same ids on every server


def test_a_full_vocab_stops_learning_and_unknown_ids_detokenize_to_nothing() -> None:
    vocab = Vocab(capacity=1)
    first, second = vocab.tokenize("a b")
    assert vocab.detokenize([first, second]) == "a"
    assert Vocab().detokenize([first]) == ""


def test_chat_messages_render_as_chatml() -> None:
    text = render_chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]},
            {"role": "assistant", "content": None},
        ]
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_embeddings_are_deterministic_unit_vectors() -> None:
    a = embed("hello", seed=1)
    assert a == embed("hello", seed=1)
    assert a != embed("hello", seed=2)
    assert a != embed("world", seed=1)
    assert len(embed("x", dim=8)) == 8
    assert math.fsum(x * x for x in a) == pytest.approx(1.0)


def test_timings_report_rates_like_llama_server() -> None:
    timings = Timings(prompt_n=10, prompt_ms=5.0, predicted_n=20, predicted_ms=400.0)
    assert timings.to_json() == {
        "cache_n": 0,
        "prompt_n": 10,
        "prompt_ms": 5.0,
        "prompt_per_token_ms": 0.5,
        "prompt_per_second": 2000.0,
        "predicted_n": 20,
        "predicted_ms": 400.0,
        "predicted_per_token_ms": 20.0,
        "predicted_per_second": 50.0,
    }
    empty = Timings(prompt_n=0, prompt_ms=0.0, predicted_n=0, predicted_ms=0.0).to_json()
    assert empty["predicted_per_second"] == empty["prompt_per_token_ms"] == 0.0

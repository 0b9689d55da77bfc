"""The replay of section 5's real part through the pure core runs, loses nothing the
modelled servers still hold, and keeps most later turns on their conversation's server."""

from __future__ import annotations

import pytest

import prefix_replay


def test_the_index_forgets_no_conversation_a_server_still_holds() -> None:
    hit, counts = prefix_replay.replay(0.5, 1, 400.0)
    assert counts["conversations forgotten, the server held"] == 0
    later = sum(v for k, v in counts.items() if k.startswith("later turns"))
    kept = counts["later turns: prefix, same server"]
    assert later > 50 and kept > later * 0.7, counts
    assert 0.45 < hit < 1.0


def test_the_sticky_yardstick_keeps_every_conversation_on_one_server() -> None:
    setup = prefix_replay.Setup(servers=4, slots=1, host=4, turn_words=32, router="sticky")
    hit, counts = prefix_replay.replay(0.5, 1, 60.0, setup)
    later = {k: v for k, v in counts.items() if k.startswith("later turns")}
    assert later == {"later turns: pinned, same server": sum(later.values())}, counts
    assert sum(later.values()) > 50 and hit > 0.5
    assert 100 <= counts["busiest/mean %"] < 200 and counts["ttft p50 ms"] > 0


def test_bad_fleet_options_exit_with_their_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        prefix_replay.main(["--fleet", "4,1"])
    assert "--fleet takes three integers" in capsys.readouterr().err

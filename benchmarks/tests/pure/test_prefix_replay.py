"""The replay of section 5's real part through the pure core runs, loses nothing the
modelled servers still hold, and keeps most later turns on their conversation's server."""

from __future__ import annotations

import prefix_replay


def test_the_index_forgets_no_conversation_a_server_still_holds() -> None:
    hit, counts = prefix_replay.replay(0.5, 1, 400.0)
    assert counts["conversations forgotten, the server held"] == 0
    later = sum(v for k, v in counts.items() if k.startswith("later turns"))
    kept = counts["later turns: prefix, same server"]
    assert later > 50 and kept > later * 0.7, counts
    assert 0.45 < hit < 1.0

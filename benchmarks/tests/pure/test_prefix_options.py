"""Section 5's options for its real part: bad values say what is wrong."""

from __future__ import annotations

import pytest

from comparison import prefix


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--fleet", "4,1"], "--fleet takes SERVERS,SLOTS,HOST_PROMPTS, got '4,1'"),
        (["--fleet", "0,1,4"], "at least 1 server and 1 slot"),
        (["--turn-words", "0"], "--turn-words must be at least 1"),
        (["--history", "imagined"], "invalid choice: 'imagined'"),
        (["--real-loads", "0.9,x"], "--real-loads takes comma-separated shares"),
        (["--real-loads", "0.5,0"], "every share must be above 0"),
        (["--sim-loads", "-1"], "--sim-loads: every share must be above 0"),
    ],
)
def test_bad_real_part_options_exit_with_a_message(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        prefix.main(["--part", "real", *argv])
    assert exit_.value.code == 2
    assert words in capsys.readouterr().err


def test_help_lists_the_real_parts_options_beside_the_sections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        prefix.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--fleet", "--real-loads", "--turn-words", "--part", "--repeat", "--quick"):
        assert option in out

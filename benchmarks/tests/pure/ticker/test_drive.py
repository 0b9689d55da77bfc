"""The ticker driver's result line (:mod:`comparison.ticker.drive`)."""

from __future__ import annotations

import json

import pytest

from comparison.ticker.drive import RESULT_MARK, DriveResult, parse_result


def test_parse_result_reads_the_last_line() -> None:
    result = DriveResult(4, 1.0, 100, 5, 0, 0, 20000, 90)
    text = (
        "go\nstop\n"
        + RESULT_MARK
        + json.dumps({f: getattr(result, f) for f in DriveResult.__dataclass_fields__})
    )
    assert parse_result(text) == result
    assert parse_result(text).tokens_per_second == 100.0
    with pytest.raises(ValueError):
        parse_result("go\n")

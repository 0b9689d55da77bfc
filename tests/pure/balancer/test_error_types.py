"""Error bodies name OpenAI's error types: a client's error is never a server_error."""

from __future__ import annotations

import pytest

from corral.balancer.errors import HTTPError


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (409, "invalid_request_error"),  # cancelling an ended batch: was server_error
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (501, "server_error"),
        (503, "unavailable_error"),
    ],
)
def test_each_status_names_its_side(status: int, kind: str) -> None:
    assert HTTPError(status, "m").body()["error"]["type"] == kind

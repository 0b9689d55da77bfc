"""The balancer's error middleware: a fault of ours is a JSON 500, never aiohttp's text."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from corral.balancer.errors import error_middleware


async def _client(handler: web.Handler) -> TestClient[web.Request, web.Application]:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/x", handler)
    client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_an_unexpected_exception_is_a_json_500_and_logged_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise KeyError("state")

    client = await _client(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="corral.http"):
            response = await client.get("/x")
            body = await response.json()
    finally:
        await client.close()
    assert response.status == 500
    assert body["error"]["message"].startswith("internal error (KeyError)")
    assert body["error"]["code"] == 500
    lines = [r for r in caplog.records if "GET /x" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is not None  # one line, with the traceback


@pytest.mark.parametrize(
    ("fault", "status", "message"),
    [
        (TimeoutError(), 504, "timed out"),  # as aiohttp answers it, in JSON
        (ConnectionRefusedError("upstream"), 500, "internal error (ConnectionRefusedError)"),
    ],
)
async def test_timeouts_and_failed_connections_of_our_own_are_json_too(
    fault: Exception, status: int, message: str
) -> None:
    """A connection that failed was taken for a client that left, and got plain text."""

    async def broken(request: web.Request) -> web.Response:
        raise fault

    client = await _client(broken)
    try:
        response = await client.get("/x")
        body = await response.json()
    finally:
        await client.close()
    assert response.status == status
    assert body["error"]["message"].startswith(message)


async def test_a_stream_that_had_begun_is_not_answered_again() -> None:
    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        raise RuntimeError("mid-stream")

    client = await _client(half)
    try:
        response = await client.get("/x")
        assert response.status == 200  # the status sent before the fault stands
        with pytest.raises(Exception):  # noqa: B017 - the stream is cut, whatever aiohttp calls it
            await response.read()
    finally:
        await client.close()

"""Errors the balancer answers with, in OpenAI's (and llama-server's) error format.

Third-party exceptions are mapped to :class:`HTTPError` at the edge, each carrying
the status the client should see; handlers raise it and one middleware renders it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

log = logging.getLogger("corral.http")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "unavailable_error",
    504: "timeout_error",
}


class HTTPError(Exception):
    """An error for the client: a status, a message, and optional extra fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        buffer: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.extra = extra or {}
        self.headers = dict(headers or {})
        self.buffer = buffer
        """Why the buffer turned the request away (``full``, ``timeout``), for
        ``corral_buffer_rejections_total``; None for any other error."""

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.status,
            "message": self.message,
            "type": _TYPES.get(  # another 4xx (409 Conflict...) is the client's error
                self.status, "invalid_request_error" if self.status < 500 else "server_error"
            ),
        }
        error.update(self.extra)
        return {"error": error}

    def header_pairs(self) -> list[tuple[str, str]]:
        """Its own headers, and Retry-After when it has one."""
        headers = list(self.headers.items())
        if self.retry_after is not None:
            headers.append(("Retry-After", str(max(1, round(self.retry_after)))))
        return headers

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type="application/json",
            headers=self.header_pairs(),
        )

    def __repr__(self) -> str:
        return f"<HTTPError {self.status} {self.message!r}>"


def sse_error_event(status: int, message: str) -> bytes:
    """A final SSE event telling a streaming client the response broke off."""
    body = HTTPError(status, message).body()
    # The blank line first ends any event the server left half-written.
    return b"\n\ndata: " + json.dumps(body).encode() + b"\n\n"


def render(request: web.Request, exc: Exception) -> web.Response:
    """The JSON response for an :class:`HTTPError` or aiohttp's own HTTP errors
    (404 no route, 405, 413 body too large), logged in one line."""
    if isinstance(exc, HTTPError):
        error = exc
    elif isinstance(exc, web.HTTPException):
        message = exc.reason
        if exc.status == 413:
            message = f"request body too large: {exc.text}"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        error = HTTPError(exc.status, message, headers=headers)
    else:
        raise TypeError(f"not an HTTP error: {exc!r}")
    log_error(request.method, request.path, request.remote, error)
    return error.response()


def log_error(method: str, path: str, remote: str | None, error: HTTPError) -> None:
    """The one log line of an error answer (a warning for 5xx, else info)."""
    log.log(
        logging.WARNING if error.status >= 500 else logging.INFO,
        "%s %s from %s -> %d %s",
        method,
        path,
        remote,
        error.status,
        error.message,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Render errors raised by handlers as JSON (see :func:`render`). Any other
    exception is answered as JSON too, where aiohttp answers a line of plain text: a
    :class:`TimeoutError` as 504 (as aiohttp does), anything else, a fault of ours,
    as 500, logged with its traceback. Not when the answer had begun (a stream, a
    WebSocket: nothing more can be said on it) or the client has left."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except HTTPError as exc:
        return render(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return render(request, exc)
    except Exception as exc:
        transport = request.transport
        if request.writer.output_size or transport is None or transport.is_closing():
            raise  # the answer had begun, or there is no one to answer
        if isinstance(exc, TimeoutError):
            return render(request, HTTPError(504, f"timed out: {exc}" if str(exc) else "timed out"))
        error = HTTPError(500, f"internal error ({type(exc).__name__}); the balancer's log has why")
        log.error(  # the one line of this answer (render's), with the traceback
            "%s %s from %s -> 500 %s",
            request.method,
            request.path,
            request.remote,
            error.message,
            exc_info=exc,
        )
        return error.response()


def not_utf8(exc: Exception) -> str:
    """The reason a JSON body failed to decode, for its 400 answer: msgspec raises
    :class:`UnicodeDecodeError` (not its ``DecodeError``) for a string that is not
    UTF-8, and that must be the client's error, not a 500."""
    if isinstance(exc, UnicodeDecodeError):
        return f"a string is not UTF-8 ({exc.reason})"
    return str(exc)

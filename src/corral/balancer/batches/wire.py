"""OpenAI's Batch API formats, without I/O: input lines in, objects and output lines out.

What OpenAI's API reference fixes and this module follows:

- an input file is JSONL, one request a line:
  ``{"custom_id": str, "method": "POST", "url": <the batch's endpoint>, "body": {...}}``;
  ``custom_id`` values are unique within the file;
- a batch whose file breaks these rules is ``failed`` with ``errors`` (code, message,
  line, param) and runs nothing;
- each line's outcome is one line of the output file (a 2xx answer) or of the error
  file (any other answer, or none), shaped
  ``{"id": "batch_req_...", "custom_id", "response": {"status_code", "request_id",
  "body"} | null, "error": {"code", "message"} | null}``.

:func:`multipart_fields` reads the ``multipart/form-data`` body of ``POST /v1/files``
(RFC 7578), which is all the inference listener needs of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

ENDPOINTS: Final = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
"""Endpoints a batch may target (OpenAI's, less those no llama.cpp server answers)."""

MAX_LINES: Final = 50_000
"""OpenAI's limit on requests per batch."""

STATUSES: Final = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
FINAL: Final = frozenset(("failed", "completed", "expired", "cancelled"))
"""Statuses a batch never leaves."""

_WINDOW = re.compile(r"([1-9][0-9]{0,6})([smh])")
_UNIT = {"s": 1, "m": 60, "h": 3600}


class WireError(ValueError):
    """A request the Batch API refuses: ``status`` is the HTTP status to answer,
    ``param`` the parameter at fault (OpenAI's error ``param``), if any."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True, slots=True)
class Line:
    """One request of an input file: its 0-based index, ``custom_id`` and body (JSON)."""

    index: int
    custom_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class LineError:
    """Why an input file is refused: OpenAI's ``BatchError`` (``line`` is 1-based)."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "line": self.line, "param": self.param}


def window_seconds(window: str) -> int:
    """Seconds in a completion window. OpenAI accepts ``24h`` only; Corral also takes
    any ``<n>s``, ``<n>m`` or ``<n>h``. Raises :class:`WireError`."""
    match = _WINDOW.fullmatch(window) if isinstance(window, str) else None
    if match is None:
        raise WireError(
            f"completion_window {window!r} is not a duration such as '24h' (or <n>m, <n>s)",
            param="completion_window",
        )
    return int(match[1]) * _UNIT[match[2]]


def parse_input(
    data: bytes, endpoint: str, max_lines: int = MAX_LINES
) -> tuple[list[Line], list[LineError]]:
    """The requests of an input file for ``endpoint``, or why it is refused.

    Returns (lines, errors): when ``errors`` is not empty the batch must not run. Each
    body is re-encoded with ``stream`` removed: a batch line is answered whole."""
    lines: list[Line] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            errors.append(
                LineError("invalid_json_line", f"line {number} is not JSON: {exc}", number)
            )
            continue
        if not isinstance(item, dict):
            errors.append(
                LineError("invalid_json_line", f"line {number} is not a JSON object", number)
            )
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            errors.append(
                LineError(
                    "missing_required_parameter",
                    "custom_id is required (a string)",
                    number,
                    "custom_id",
                )
            )
            continue
        if custom_id in seen:
            errors.append(
                LineError(
                    "duplicate_custom_id",
                    f"custom_id {custom_id!r} is used twice",
                    number,
                    "custom_id",
                )
            )
            continue
        seen.add(custom_id)
        if item.get("method", "POST") != "POST":
            errors.append(LineError("invalid_method", "method must be POST", number, "method"))
            continue
        if item.get("url") != endpoint:
            errors.append(
                LineError(
                    "mismatched_endpoint",
                    f"url {item.get('url')!r} is not the batch's endpoint {endpoint}",
                    number,
                    "url",
                )
            )
            continue
        body = item.get("body")
        if not isinstance(body, dict):
            errors.append(
                LineError(
                    "missing_required_parameter", "body must be a JSON object", number, "body"
                )
            )
            continue
        body.pop("stream", None)
        body.pop("stream_options", None)
        lines.append(Line(len(lines), custom_id, json.dumps(body, separators=(",", ":")).encode()))
    if not lines and not errors:
        errors.append(LineError("empty_file", "the input file has no requests"))
    if len(lines) > max_lines:
        errors.append(LineError("too_many_requests", f"a batch holds at most {max_lines} requests"))
    return lines, errors


def output_line(
    line_id: str, custom_id: str, status: int, request_id: str, body: bytes
) -> tuple[bool, str]:
    """The output (or error) file line of an answered request, and whether it belongs in
    the output file (a 2xx answer) rather than the error file."""
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = body.decode("utf-8", "replace")
    item = {
        "id": line_id,
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": parsed},
        "error": None,
    }
    return 200 <= status < 300, json.dumps(item, separators=(",", ":"))


def error_line(line_id: str, custom_id: str, code: str, message: str) -> str:
    """The error file line of a request that got no answer (``batch_expired``,
    ``batch_cancelled``)."""
    item = {
        "id": line_id,
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }
    return json.dumps(item, separators=(",", ":"))


# ------------------------------------------------------------------ multipart
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_DISPOSITION = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class Field:
    """One part of a ``multipart/form-data`` body."""

    name: str
    data: bytes
    filename: str | None = None


def multipart_fields(content_type: str | None, body: bytes) -> dict[str, Field]:
    """The parts of a ``multipart/form-data`` body by field name. Raises
    :class:`WireError` for another content type, a malformed body, or a field given
    twice (two files in one upload: which one to keep would be a guess)."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise WireError("POST /v1/files takes multipart/form-data (fields 'file' and 'purpose')")
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise WireError("multipart/form-data without a boundary")
    delimiter = b"--" + match[1].encode("latin-1")
    chunks = (b"\r\n" + body).split(b"\r\n" + delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise WireError("malformed multipart body: no closing boundary")
    fields: dict[str, Field] = {}
    for chunk in chunks[1:-1]:
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise WireError("malformed multipart body: a part has no header end")
        name = filename = None
        for header in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = header.partition(":")
            if key.strip().lower() == "content-disposition":
                params = {k.lower(): v.replace('\\"', '"') for k, v in _DISPOSITION.findall(value)}
                name = params.get("name")
                filename = params.get("filename")
        if name is None:
            raise WireError("malformed multipart body: a part has no name")
        if name in fields:
            raise WireError(f"the field {name!r} is given twice: one per upload", param=name)
        fields[name] = Field(name, data, filename)
    return fields

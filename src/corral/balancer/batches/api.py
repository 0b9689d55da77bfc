"""The Batch API's routes on the inference listener (OpenAI's ``/v1/files`` and
``/v1/batches``), answered from the store; the runner does the work.

==========================================  ==========================================
``POST /v1/files``                          upload (multipart: ``file``, ``purpose=batch``)
``GET /v1/files``                           list (``?purpose=``)
``GET /v1/files/{id}``                      a file's object
``GET /v1/files/{id}/content``              its bytes
``DELETE /v1/files/{id}``                   delete it
``POST /v1/batches``                        create (``input_file_id``, ``endpoint``,
                                            ``completion_window``, ``metadata``)
``GET /v1/batches``                         list, newest first (``?limit=&after=``)
``GET /v1/batches/{id}``                    a batch's object, with ``request_counts``
``POST /v1/batches/{id}/cancel``            cancel: ``cancelling``, then ``cancelled``
==========================================  ==========================================
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

from corral.balancer.batches.runner import BatchRunner
from corral.balancer.batches.store import BatchStore, StoreError
from corral.balancer.batches.wire import (
    ENDPOINTS,
    MAX_LINES,
    WireError,
    multipart_fields,
    parse_input,
    window_seconds,
)
from corral.balancer.errors import HTTPError
from corral.balancer.http_server import Request, Responder, encode_headers
from corral.core.queueing import Tenant
from corral.core.queueing.classes import DEFAULT_TENANT


class BatchApi:
    """Answers the Batch API's routes (:data:`corral.core.endpoints.Kind.BATCH`)."""

    def __init__(self, store: BatchStore, runner: BatchRunner, max_lines: int = MAX_LINES) -> None:
        self.store = store
        self.runner = runner
        self.max_lines = max_lines

    async def handle(self, request: Request, out: Responder, tenant: Tenant | None = None) -> None:
        """One request of ``tenant`` (None: the default one, when no keys are asked):
        a batch it creates runs as it. Raises :class:`HTTPError` (400, 404, 405, 409)."""
        try:
            await self._route(request, out, tenant)
        except StoreError as exc:
            raise HTTPError(exc.status, str(exc)) from None
        except WireError as exc:
            extra = {"param": exc.param} if exc.param else None
            raise HTTPError(exc.status, str(exc), extra=extra) from None

    async def _route(self, request: Request, out: Responder, tenant: Tenant | None) -> None:
        # a tenant sees only its own files and batches; without keys every request is
        # the default tenant's, and so is everything made before tenants were kept
        owner = tenant.name if tenant is not None else DEFAULT_TENANT
        method = request.method
        parts = request.path.strip("/").split("/")[1:]  # after "v1"
        query = {k: v[-1] for k, v in parse_qs(request.target.partition(b"?")[2].decode()).items()}
        match (method, parts):
            case ("POST", ["files"]):
                return _json(out, await self._upload(request, owner))
            case ("GET", ["files"]):
                files = self.store.files(query.get("purpose"), owner)
                return _json(out, {"object": "list", "data": files, "has_more": False})
            case ("GET", ["files", file_id]):
                return _json(out, self.store.file(file_id, owner))
            case ("DELETE", ["files", file_id]):
                return _json(out, self.store.delete_file(file_id, owner))
            case ("GET", ["files", file_id, "content"]):
                head = encode_headers([("Content-Type", "application/octet-stream")])
                return out.send(200, head, self.store.content(file_id, owner))
            case ("POST", ["batches"]):
                return _json(out, await self._create(request, owner))
            case ("GET", ["batches"]):
                limit = _limit(query.get("limit"))
                page, more = self.store.batches(limit, query.get("after"), owner)
                return _json(
                    out,
                    {
                        "object": "list",
                        "data": page,
                        "first_id": page[0]["id"] if page else None,
                        "last_id": page[-1]["id"] if page else None,
                        "has_more": more,
                    },
                )
            case ("GET", ["batches", batch_id]):
                return _json(out, self.store.batch(batch_id, owner))
            case ("POST", ["batches", batch_id, "cancel"]):
                batch = self.store.cancel(batch_id, owner)
                self.runner.wake()
                return _json(out, batch)
        raise HTTPError(404, f"{method} {request.path}: no such Batch API route")

    async def _upload(self, request: Request, owner: str) -> dict[str, Any]:
        fields = multipart_fields(request.header(b"content-type"), request.body)
        if "file" not in fields:
            raise WireError("the 'file' field is required", param="file")
        purpose = fields["purpose"].data.decode() if "purpose" in fields else ""
        if purpose != "batch":
            raise WireError(
                f"purpose {purpose!r} is not served here: Corral keeps files for 'batch' only",
                param="purpose",
            )
        upload = fields["file"]
        file_id = await asyncio.to_thread(self.store.save, upload.data)
        name = upload.filename or "upload.jsonl"
        return self.store.add_file(file_id, upload.data, name, purpose, owner)

    async def _create(self, request: Request, owner: str) -> dict[str, Any]:
        try:
            params = json.loads(request.body)
        except ValueError as exc:
            raise WireError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise WireError("request body must be a JSON object")
        endpoint = params.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise WireError(
                f"endpoint {endpoint!r} is not one of {', '.join(ENDPOINTS)}", param="endpoint"
            )
        if "completion_window" not in params:  # required by OpenAI: no default
            raise WireError("completion_window is required ('24h')", param="completion_window")
        window = params["completion_window"]
        window_s = window_seconds(window)
        metadata = _metadata(params.get("metadata"))
        file_id = params.get("input_file_id")
        if not isinstance(file_id, str):
            raise WireError("input_file_id is required", param="input_file_id")
        if self.store.file(file_id, owner)["purpose"] != "batch":
            raise WireError(
                f"{file_id} was not uploaded with purpose 'batch'", param="input_file_id"
            )
        data = self.store.content(file_id, owner)
        lines, errors = await asyncio.to_thread(parse_input, data, endpoint, self.max_lines)
        batch = self.store.create_batch(
            file_id,
            endpoint,
            window,
            window_s,
            metadata,
            lines,
            errors,
            tenant=owner,
        )
        self.runner.wake()
        return batch


def _limit(text: str | None) -> int:
    """``?limit=``: 1 to 100 (OpenAI's range), 20 when not given."""
    try:
        value = int(text) if text is not None else 20
    except ValueError:
        raise WireError(f"limit {text!r} is not a number", param="limit") from None
    if not 1 <= value <= 100:
        raise WireError(f"limit must be from 1 to 100, got {value}", param="limit")
    return value


METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512
"""OpenAI's bounds on a batch's ``metadata``: pairs, characters of a key, of a value."""


def _metadata(value: object) -> dict[str, str] | None:
    """A batch's ``metadata``: None, or at most 16 string pairs within OpenAI's
    lengths. Raises :class:`WireError` (400) naming what is wrong."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise WireError("metadata must be an object of strings", param="metadata")
    if len(value) > METADATA_PAIRS:
        raise WireError(
            f"metadata has {len(value)} pairs; at most {METADATA_PAIRS}", param="metadata"
        )
    for key, text in value.items():
        if len(key) > METADATA_KEY or len(text) > METADATA_VALUE:
            raise WireError(
                f"metadata {key[:20]!r}: keys take at most {METADATA_KEY} characters, "
                f"values {METADATA_VALUE}",
                param="metadata",
            )
    return value


def _json(out: Responder, body: Any) -> None:
    out.send_json(200, body)

"""The Batch API's formats (corral.balancer.batches.wire) and its routes' kind."""

from __future__ import annotations

import json

import pytest

from corral.balancer.batches.wire import (
    WireError,
    error_line,
    multipart_fields,
    output_line,
    parse_input,
    window_seconds,
)
from corral.core.endpoints import Kind, classify

CHAT = "/v1/chat/completions"


def line(custom_id: str, **over: object) -> bytes:
    item = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {"model": "m"}}
    item.update(over)
    return json.dumps(item).encode()


def test_lines_are_read_in_order_without_stream() -> None:
    data = b"\n".join([line("a"), b"", line("b", body={"model": "m", "stream": True})])
    lines, errors = parse_input(data, CHAT)
    assert errors == []
    assert [(x.index, x.custom_id) for x in lines] == [(0, "a"), (1, "b")]
    assert json.loads(lines[1].body) == {"model": "m"}  # a batch line is answered whole


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (b"{not json", "invalid_json_line"),
        (b"[1]", "invalid_json_line"),
        (line("a"), "duplicate_custom_id"),
        (line("", body={}), "missing_required_parameter"),
        (line("c", method="GET"), "invalid_method"),
        (line("d", url="/v1/embeddings"), "mismatched_endpoint"),
        (line("e", body="text"), "missing_required_parameter"),
    ],
)
def test_a_bad_line_is_named_with_its_number(bad: bytes, code: str) -> None:
    _, errors = parse_input(line("a") + b"\n" + bad, CHAT)
    assert [(e.code, e.line) for e in errors] == [(code, 2)]


def test_empty_and_oversized_files_are_refused() -> None:
    assert [e.code for e in parse_input(b"\n\n", CHAT)[1]] == ["empty_file"]
    data = b"\n".join(line(str(i)) for i in range(3))
    assert [e.code for e in parse_input(data, CHAT, max_lines=2)[1]] == ["too_many_requests"]


def test_windows() -> None:
    assert window_seconds("24h") == 86400
    assert window_seconds("90s") == 90
    for bad in ("", "24", "0h", "1d", "-1h"):
        with pytest.raises(WireError):
            window_seconds(bad)


def test_output_and_error_lines_have_openais_shape() -> None:
    ok, text = output_line("batch_req_1", "a", 200, "rid", b'{"x":1}')
    assert ok and json.loads(text) == {
        "id": "batch_req_1",
        "custom_id": "a",
        "response": {"status_code": 200, "request_id": "rid", "body": {"x": 1}},
        "error": None,
    }
    ok, text = output_line("batch_req_2", "b", 400, "rid", b"not json")
    assert not ok and json.loads(text)["response"]["body"] == "not json"
    assert json.loads(error_line("i", "c", "batch_expired", "late")) == {
        "id": "i",
        "custom_id": "c",
        "response": None,
        "error": {"code": "batch_expired", "message": "late"},
    }


def test_multipart_fields() -> None:
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\n'
        b"batch\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
        b"line1\r\n\r\nline2\n\r\n"
        b"--XyZ--\r\n"
    )
    fields = multipart_fields('multipart/form-data; boundary="XyZ"', body)
    assert fields["purpose"].data == b"batch"
    assert fields["file"].filename == "in.jsonl"
    assert fields["file"].data == b"line1\r\n\r\nline2\n"
    with pytest.raises(WireError):
        multipart_fields("application/json", body)
    with pytest.raises(WireError):
        multipart_fields("multipart/form-data; boundary=XyZ", body[:-9])  # no closing
    # two files in one upload: the first was dropped without a word
    part = body.split(b"--XyZ\r\n")[2].removesuffix(b"--XyZ--\r\n")
    twice = body.removesuffix(b"--XyZ--\r\n") + b"--XyZ\r\n" + part + b"--XyZ--\r\n"
    with pytest.raises(WireError, match="the field 'file' is given twice"):
        multipart_fields("multipart/form-data; boundary=XyZ", twice)


def test_batch_routes_are_their_own_kind() -> None:
    assert classify("POST", "/v1/files") is Kind.BATCH
    assert classify("GET", "/v1/files/file-1/content") is Kind.BATCH
    assert classify("DELETE", "/v1/files/file-1") is Kind.BATCH
    assert classify("POST", "/v1/batches/batch_1/cancel") is Kind.BATCH
    assert classify("GET", "/v1/batches") is Kind.BATCH
    assert classify("DELETE", "/v1/batches/batch_1") is None
    assert classify("POST", "/v1/chat/completions") is Kind.INFERENCE

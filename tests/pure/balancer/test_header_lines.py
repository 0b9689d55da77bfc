"""Header lines the balancer writes: never one with a line break or NUL in it."""

from __future__ import annotations

import pytest

from corral.balancer.http_server import encode_headers
from corral.balancer.proxy import _DROP_RESPONSE, _response_headers


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-A", "b\r\nX-Injected: 1"),
        ("X-A", "b\nc"),
        ("X-A", "b\rc"),
        ("X-A", "b\x00c"),
        ("X-A\r\nX-B", "c"),
        ("X A", "c"),
        ("X-A:", "c"),
        ("", "c"),
    ],
)
def test_encode_headers_refuses_what_would_not_be_one_header(name: str, value: str):
    with pytest.raises(ValueError):
        encode_headers([(name, value)])


def test_a_servers_invalid_header_is_left_out_and_the_rest_relayed():
    """llhttp refuses these, so this is the second line of defence."""
    headers = [
        (b"Content-Type", b"application/json"),
        (b"X-Bad", b"a\r\nSet-Cookie: stolen=1"),
        (b"X-Nul", b"a\x00b"),
        (b"X-Lf", b"a\nb"),
        (b"X-Good", b"yes"),
    ]
    head = _response_headers(headers, _DROP_RESPONSE, "s")
    assert bytes(head) == b"Content-Type: application/json\r\nX-Good: yes\r\n"


def test_hop_by_hop_response_headers_and_those_connection_names_are_left_out():
    headers = [
        (b"Connection", b"keep-alive, X-Hop, close"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"x-hop", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-Kept", b"1"),
    ]
    assert bytes(_response_headers(headers, _DROP_RESPONSE, "s")) == b"X-Kept: 1\r\n"

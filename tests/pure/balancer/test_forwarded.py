"""Which peers' forwarded headers are believed, and what is sent upstream."""

from __future__ import annotations

import pytest

from corral.balancer.forwarded import ProxyTrust, forwarded_lines


def lines(data: bytes) -> list[str]:
    return data.decode("latin-1").split("\r\n")[:-1]


def test_default_trust_is_uvicorns_loopback_address_only():
    trust = ProxyTrust()
    assert trust.trusts("127.0.0.1")
    assert not trust.trusts("127.0.0.2")
    assert not trust.trusts("::1")
    assert not trust.trusts("10.0.0.1")


def test_addresses_networks_and_everyone():
    trust = ProxyTrust(["10.0.0.0/8", " 192.0.2.7 ", "fd00::/8", ""])
    assert trust.trusts("10.1.2.3")
    assert trust.trusts("192.0.2.7")
    assert trust.trusts("fd00::1")
    assert not trust.trusts("11.0.0.1")
    assert not trust.trusts("not an address")
    assert ProxyTrust(["::1"]).trusts("::1")
    assert ProxyTrust(["0:0::1"]).trusts("::1")  # compared as addresses, not strings
    assert ProxyTrust(["*"]).trusts("203.0.113.9")
    assert not ProxyTrust([]).trusts("127.0.0.1")
    assert repr(ProxyTrust([])) == "<ProxyTrust nobody>"


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "1.2.3.4.5"])
def test_an_entry_that_is_no_address_is_an_error(entry: str):
    with pytest.raises(ValueError):
        ProxyTrust([entry])


def test_an_untrusted_peers_headers_are_replaced():
    incoming = {b"x-forwarded-for": [b"6.6.6.6"], b"forwarded": [b"for=6.6.6.6"]}
    out = forwarded_lines(incoming, "192.0.2.1", b"api.example", trusted=False)
    assert lines(out) == [
        "X-Forwarded-For: 192.0.2.1",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Host: api.example",
        "Forwarded: for=192.0.2.1;host=api.example;proto=http",
    ]


def test_a_trusted_peers_chain_is_appended_to():
    incoming = {
        b"x-forwarded-for": [b"203.0.113.1, 10.0.0.2", b"10.0.0.3"],
        b"forwarded": [b'for="[2001:db8::1]"'],
        b"x-forwarded-proto": [b"https"],
        b"x-forwarded-host": [b"public.example"],
        b"x-real-ip": [b"203.0.113.1"],
    }
    out = forwarded_lines(incoming, "10.0.0.4", b"inner:8061", trusted=True)
    assert lines(out) == [
        "X-Forwarded-For: 203.0.113.1, 10.0.0.2, 10.0.0.3, 10.0.0.4",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: public.example",
        'Forwarded: for="[2001:db8::1]", for=10.0.0.4;host="inner:8061";proto=http',
        "X-Real-IP: 203.0.113.1",
    ]


def test_ipv6_peers_are_bracketed_and_quoted_and_a_missing_host_is_left_out():
    out = forwarded_lines({}, "::1", None, trusted=True)
    assert lines(out) == [
        "X-Forwarded-For: ::1",
        "X-Forwarded-Proto: http",
        'Forwarded: for="[::1]";proto=http',
    ]

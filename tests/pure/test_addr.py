import pytest

from corral.addr import Addr, AddressError


def test_parse():
    assert Addr.parse("0.0.0.0:80") == Addr("0.0.0.0", 80)
    assert Addr.parse(":8080") == Addr("127.0.0.1", 8080)
    assert Addr.parse("[::1]:9") == Addr("::1", 9)
    assert Addr.parse("[::1]:9").url() == "http://[::1]:9"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("localhost", "expected HOST:PORT"),
        ("h:x", "not a number"),
        ("h:70000", "out of range"),
        ("http://h:1", "not a URL"),
    ],
)
def test_errors(text, reason):
    with pytest.raises(AddressError, match=reason):
        Addr.parse(text)


def test_listeners_clash_on_one_fixed_port_of_one_host_or_a_wildcard():
    a = Addr.parse("127.0.0.1:9000")
    assert a.clashes(Addr.parse("127.0.0.1:9000"))
    assert a.clashes(Addr.parse("0.0.0.0:9000")) and Addr.parse("0.0.0.0:9000").clashes(a)
    # asyncio binds IPv6 sockets IPv6-only: :: and 127.0.0.1 bind side by side
    assert not Addr.parse("[::]:9000").clashes(a) and not a.clashes(Addr.parse("[::]:9000"))
    assert Addr.parse("[::]:9000").clashes(Addr.parse("[::1]:9000"))
    assert Addr.parse("0.0.0.0:9000").clashes(Addr.parse("localhost:9000"))  # a name: either
    assert not a.clashes(Addr.parse("127.0.0.1:9001"))
    assert not a.clashes(Addr.parse("10.0.0.1:9000"))  # two addresses of the machine
    assert not Addr.parse("127.0.0.1:0").clashes(Addr.parse("127.0.0.1:0"))  # free ports

"""``corral balancer --forwarded-allow-ips``: as uvicorn's flag, a comma-separated list."""

import pytest

from corral.balancer import BalancerConfig
from corral.cli import main, parser


def test_the_default_trusts_loopback_as_uvicorn_does():
    args = parser().parse_args(["balancer"])
    assert args.forwarded_allow_ips == ("127.0.0.1",) == BalancerConfig().forwarded_allow_ips


def test_a_list_replaces_the_default_and_the_environment_sets_it(monkeypatch):
    args = parser().parse_args(["balancer", "--forwarded-allow-ips", "10.0.0.0/8, ::1"])
    assert args.forwarded_allow_ips == ("10.0.0.0/8", "::1")
    monkeypatch.setenv("CORRAL_FORWARDED_ALLOW_IPS", "")
    assert parser().parse_args(["balancer"]).forwarded_allow_ips == ()  # trust nobody


def test_an_entry_that_is_no_address_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["balancer", "--forwarded-allow-ips", "127.0.0.1,proxy.local"])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "proxy.local" in err
    assert "Traceback" not in err

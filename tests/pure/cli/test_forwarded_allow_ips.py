"""``corral balancer --forwarded-allow-ips``: as uvicorn's flag, a comma-separated list."""

import pytest

from corral.balancer import BalancerConfig
from corral.balancer.forwarded import DEFAULT_ALLOW
from corral.cli import main, parse_args


def test_the_default_trusts_loopback_as_uvicorn_does():
    args = parse_args(["balancer"], {})
    assert args.forwarded_allow_ips == ("127.0.0.1",) == BalancerConfig().forwarded_allow_ips
    assert BalancerConfig().forwarded_allow_ips == DEFAULT_ALLOW


def test_a_list_replaces_the_default_and_the_environment_sets_it():
    args = parse_args(["balancer", "--forwarded-allow-ips", "10.0.0.0/8, ::1"], {})
    assert args.forwarded_allow_ips == ("10.0.0.0/8", "::1")
    env = {"CORRAL_FORWARDED_ALLOW_IPS": ""}
    assert parse_args(["balancer"], env).forwarded_allow_ips == ()  # trust nobody


def test_an_entry_that_is_no_address_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["balancer", "--forwarded-allow-ips", "127.0.0.1,proxy.local"])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "proxy.local" in err
    assert "Traceback" not in err

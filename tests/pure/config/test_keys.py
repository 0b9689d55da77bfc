"""The keys file: one key per line (as before) or TOML tenants; matching keys."""

from __future__ import annotations

import hashlib

import pytest

from corral.config.keys import Keys, KeysError, parse_keys
from corral.core.queueing import Priority, Tenant

TOML = """
# two tenants
[[tenant]]
name = "chat"
key = "sk-chat"
class = "interactive"
max_class = "high"
max_concurrent = 4
weight = 2

[[tenant]]
name = "nightly"
key_sha256 = "{}"
class = "batch"
""".format(hashlib.sha256(b"sk-nightly").hexdigest())


def test_one_key_per_line_still_works():
    entries = parse_keys("# comment\nk1\n\n  k2  \n")
    assert [e.key for e in entries] == ["k1", "k2"]
    assert all(e.tenant == Tenant() for e in entries)


def test_toml_tenants_and_hashed_keys_match():
    keys = Keys(parse_keys(TOML))
    chat = keys.match(b"sk-chat")
    assert chat == Tenant("chat", Priority.INTERACTIVE, Priority.HIGH, 4, 2.0)
    nightly = keys.match(b"sk-nightly")
    assert nightly is not None and nightly.priority is Priority.BATCH
    assert keys.match(b"sk-other") is None
    assert sorted(keys.tenants) == ["chat", "default", "nightly"]
    assert "sk-chat" not in repr(keys) and "sk-chat" not in repr(parse_keys(TOML))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[[tenant]]\nname = "a"\n', "exactly one of key"),
        ('[[tenant]]\nname = "a"\nkey = "k"\nweight = 0\n', "weight"),
        ('[[tenant]]\nname = "a"\nkey = "k"\nclass = "urgent"\n', "unknown priority"),
        ('[[tenant]]\nname = "a"\nkey = "k"\ncolour = "red"\n', "unknown fields"),
        ('[[tenant]]\nname = "a"\nkey_sha256 = "zz"\n', "64 hex"),
        ('[[tenant]]\nkey = "k"\n', "needs a name"),
        (
            '[[tenant]]\nname = "a"\nkey = "k"\n[[tenant]]\nname = "a"\nkey = "j"\nweight = 3\n',
            "different settings",
        ),
        ("[[tenant]\n", "not valid TOML"),
    ],
)
def test_bad_keys_files_say_why(text, error):
    with pytest.raises(KeysError, match=error):
        parse_keys(text)


@pytest.mark.parametrize("text", ["", "\n# no key here\n  \n", "# a TOML file\n"])
def test_a_keys_file_with_no_key_is_refused(text):
    """Accepting no key would leave the inference listener open to anyone: a keys file
    whose secret failed to mount reads as empty."""
    with pytest.raises(KeysError, match="names no key"):
        parse_keys(text)
    with pytest.raises(KeysError, match="names no key"):
        parse_keys(text, toml=True)


def test_a_toml_keys_file_with_no_tenant_is_refused():
    with pytest.raises(KeysError, match="names no key"):
        parse_keys("tenant = []\n", toml=True)


@pytest.mark.parametrize(
    "text",
    [
        '[[tenant]]\nname = "a"\nkey = "k1"\n[[tenant]]\nname = "b"\nkey = "k1"\n',
        '[[tenant]]\nname = "a"\nkey = "k1"\n[[tenant]]\nname = "b"\nkey_sha256 = "{}"\n'.format(
            hashlib.sha256(b"k1").hexdigest()
        ),
    ],
)
def test_one_key_for_two_tenants_is_refused(text):
    """It was accepted, and the first table's tenant won without a word."""
    with pytest.raises(KeysError, match="one key names two tenants, 'a' and 'b'"):
        parse_keys(text)


def test_a_key_of_a_tenant_and_of_api_key_is_refused(tmp_path):
    from corral.cli import _balancer_config, parse_args

    keys = tmp_path / "keys.toml"
    keys.write_text('[[tenant]]\nname = "chat"\nkey = "k1"\n')
    args = parse_args(["balancer", "--api-key", "k1", "--api-key-file", str(keys)])
    with pytest.raises(SystemExit, match="one key names two tenants, 'default' and 'chat'"):
        _balancer_config(args)
    assert Keys(
        parse_keys('[[tenant]]\nname = "a"\nkey = "k1"\n[[tenant]]\nname = "a"\nkey = "k1"\n')
    )

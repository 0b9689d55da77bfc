"""The configuration schema: one declaration per setting, and what is generated from it."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path

import pytest

from corral.addr import Addr
from corral.agent import AgentConfig
from corral.balancer import BalancerConfig
from corral.cli import main, parse_args, parser
from corral.config import AGENT, BALANCER, SCHEMAS, SIM, TOP, UP, Schema, Setting
from corral.config import files as config_files
from corral.config.schema import add_argument, format_value, positive
from corral.sim import SimConfig
from corral.up import UpConfig

ALL = list(SCHEMAS.values())
PREFIXES = {"balancer": "CORRAL_", "agent": "CORRAL_", "top": "CORRAL_", "sim": "CORRAL_SIM_",
            "up": "CORRAL_UP_"}  # fmt: skip


def _subparser(command: str) -> argparse.ArgumentParser:
    top = parser({})
    action = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]  # type: ignore[no-any-return]


# ------------------------------------------------------------ the declarations
@pytest.mark.parametrize("schema", ALL, ids=lambda s: s.command)
def test_every_setting_has_help_and_a_unique_env_name(schema: Schema):
    envs = [s.env for s in schema]
    assert len(set(envs)) == len(envs)
    for s in schema:
        assert s.help.strip(), s.name
        assert s.name.isidentifier() and s.name == s.name.lower()
        if s.name in ("log_level", "log_format"):  # shared by every command
            assert s.env == "CORRAL_" + s.name.upper()
        else:
            assert s.env == PREFIXES[schema.command] + s.name.upper()


@pytest.mark.parametrize(
    ("schema", "setting"),
    [(schema, s) for schema in ALL for s in schema if s.default not in (None, (), False)],
    ids=lambda x: getattr(x, "name", getattr(x, "command", "")),
)
def test_defaults_parse_through_their_own_parser(schema: Schema, setting: Setting):
    assert setting.parse_text(format_value(setting.default)) == setting.default
    if setting.choices:
        assert setting.default in setting.choices


def test_the_public_flags_and_env_names_stay():
    """Renaming a flag or an env variable breaks deployments: this list changes only
    by adding to it."""
    balancer = {s.flag: s.env for s in BALANCER}
    assert balancer == {
        "--inference-addr": "CORRAL_INFERENCE_ADDR",
        "--management-addr": "CORRAL_MANAGEMENT_ADDR",
        "--max-buffered-requests": "CORRAL_MAX_BUFFERED_REQUESTS",
        "--buffered-request-timeout": "CORRAL_BUFFERED_REQUEST_TIMEOUT",
        "--max-buffered-bytes": "CORRAL_MAX_BUFFERED_BYTES",
        "--queue": "CORRAL_QUEUE",
        "--interactive-reserve": "CORRAL_INTERACTIVE_RESERVE",
        "--priority-aging": "CORRAL_PRIORITY_AGING",
        "--batch-request-timeout": "CORRAL_BATCH_REQUEST_TIMEOUT",
        "--heartbeat-timeout": "CORRAL_HEARTBEAT_TIMEOUT",
        "--upstream-connect-timeout": "CORRAL_UPSTREAM_CONNECT_TIMEOUT",
        "--upstream-head-timeout": "CORRAL_UPSTREAM_HEAD_TIMEOUT",
        "--upstream-idle-timeout": "CORRAL_UPSTREAM_IDLE_TIMEOUT",
        "--upstream-keepalive-timeout": "CORRAL_UPSTREAM_KEEPALIVE_TIMEOUT",
        "--request-head-timeout": "CORRAL_REQUEST_HEAD_TIMEOUT",
        "--shutdown-timeout": "CORRAL_SHUTDOWN_TIMEOUT",
        "--agent-token": "CORRAL_AGENT_TOKEN",
        "--management-token": "CORRAL_MANAGEMENT_TOKEN",
        "--api-key": "CORRAL_API_KEY",
        "--api-key-file": "CORRAL_API_KEY_FILE",
        "--state-file": "CORRAL_STATE_FILE",
        "--data-dir": "CORRAL_DATA_DIR",
        "--batch-concurrency": "CORRAL_BATCH_CONCURRENCY",
        "--rollout-share": "CORRAL_ROLLOUT_SHARE",
        "--drain-timeout": "CORRAL_DRAIN_TIMEOUT",
        "--routing": "CORRAL_ROUTING",
        "--prefix-max-wait": "CORRAL_PREFIX_MAX_WAIT",
        "--prefix-max-pass": "CORRAL_PREFIX_MAX_PASS",
        "--statsd-addr": "CORRAL_STATSD_ADDR",
        "--statsd-prefix": "CORRAL_STATSD_PREFIX",
        "--statsd-interval": "CORRAL_STATSD_INTERVAL",
        "--max-body-size": "CORRAL_MAX_BODY_SIZE",
        "--forwarded-allow-ips": "CORRAL_FORWARDED_ALLOW_IPS",
        "--cors-origins": "CORRAL_CORS_ORIGINS",
        "--cors-methods": "CORRAL_CORS_METHODS",
        "--cors-headers": "CORRAL_CORS_HEADERS",
        "--cors-credentials": "CORRAL_CORS_CREDENTIALS",
        "--tls-cert": "CORRAL_TLS_CERT",
        "--tls-key": "CORRAL_TLS_KEY",
        "--keda-addr": "CORRAL_KEDA_ADDR",
        "--scaled-model": "CORRAL_SCALED_MODEL",
        "--log-level": "CORRAL_LOG_LEVEL",
        "--log-format": "CORRAL_LOG_FORMAT",
    }
    assert [s.flag for s in AGENT] == [
        "--local-llamacpp-addr", "--server-addr", "--model", "--slots", "--ctx-size", "--lora",
        "--cache-ram",
        "--threads",
        "--llama-server", "--llamacpp-port", "--quiet-server", "--external-llamacpp-addr",
        "--management-addr", "--name", "--llamacpp-api-key", "--agent-token",
        "--poll-interval", "--read-timeout", "--slots-gap", "--idle-slots-interval",
        "--reconnect-min", "--reconnect-max",
        "--runner", "--concurrency", "--probe-addr", "--tls", "--tls-ca", "--llamacpp-host",
        "--model-alias", "--log-level", "--log-format",
    ]  # fmt: skip
    assert [s.env for s in SIM][:6] == [
        "CORRAL_SIM_ADDR", "CORRAL_SIM_SLOTS", "CORRAL_SIM_MODEL", "CORRAL_SIM_NAME",
        "CORRAL_SIM_TOKENS_PER_SECOND", "CORRAL_SIM_API_KEY",
    ]  # fmt: skip
    assert [s.env for s in UP][:8] == [
        "CORRAL_UP_MODEL", "CORRAL_UP_AGENTS", "CORRAL_UP_SLOTS", "CORRAL_UP_CTX_SIZE",
        "CORRAL_UP_INFERENCE_ADDR", "CORRAL_UP_MANAGEMENT_ADDR", "CORRAL_UP_ROUTING",
        "CORRAL_UP_READY_TIMEOUT",
    ]  # fmt: skip
    assert [s.env for s in TOP][:2] == ["CORRAL_MANAGEMENT_ADDR", "CORRAL_MANAGEMENT_TOKEN"]


@pytest.mark.parametrize("schema", ALL, ids=lambda s: s.command)
def test_the_generated_flags_are_the_settings(schema: Schema):
    p = _subparser(schema.command)
    flags = [a.option_strings[0] for a in p._actions if a.option_strings]
    extra = ["--config", "--print-config"] if schema.command in ("balancer", "agent") else []
    assert flags == ["-h", *(s.flag for s in schema), *extra]


@pytest.mark.parametrize(
    ("cls", "schema"),
    [(BalancerConfig, BALANCER), (AgentConfig, AGENT), (SimConfig, SIM), (UpConfig, UP)],
)
def test_the_typed_configs_take_their_defaults_from_the_schema(cls, schema: Schema):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    shared = [s for s in schema if s.name in fields and s.name != "name"]
    assert shared
    for s in shared:
        assert fields[s.name].default == s.default, s.name


def test_default_arguments_make_the_default_balancer_config(tmp_path):
    args = parse_args(["balancer", "--state-file", str(tmp_path / "s.json")], environ={})
    from corral.cli import _balancer_config

    # a --state-file named on the command line must be usable: the start stops if not
    want = BalancerConfig(state_file=tmp_path / "s.json", state_file_required=True)
    assert _balancer_config(args) == want


# ------------------------------------------------------------ precedence
def test_command_line_beats_env_beats_file_beats_default(tmp_path):
    file = tmp_path / "balancer.toml"
    file.write_text(
        'inference_addr = "10.0.0.1:1"\nmanagement_addr = "10.0.0.1:2"\nmax_buffered_requests = 3\n'
    )
    env = {"CORRAL_INFERENCE_ADDR": "10.0.0.2:1", "CORRAL_MANAGEMENT_ADDR": "10.0.0.2:2"}
    args = parse_args(
        ["balancer", "--config", str(file), "--inference-addr", "10.0.0.3:1"], environ=env
    )
    assert args.inference_addr == Addr("10.0.0.3", 1)  # command line
    assert args.management_addr == Addr("10.0.0.2", 2)  # env over file
    assert args.max_buffered_requests == 3  # file over default
    assert args.heartbeat_timeout == 5.0  # default
    assert args.resolved.sources == {
        **{s.name: "default" for s in BALANCER},
        "inference_addr": "command line",
        "management_addr": "env CORRAL_MANAGEMENT_ADDR",
        "max_buffered_requests": f"file {file}",
    }


def test_the_config_file_may_come_from_the_environment(tmp_path):
    file = tmp_path / "agent.toml"
    file.write_text('management_addr = ["b1:8060", "b2:8060"]\nquiet_server = true\n')
    args = parse_args(["agent"], environ={"CORRAL_CONFIG": str(file)})
    assert args.management_addr == (Addr("b1", 8060), Addr("b2", 8060))
    assert args.quiet_server is True


def test_repeatable_env_values_are_comma_separated():
    args = parse_args(["agent"], environ={"CORRAL_MANAGEMENT_ADDR": "a:1, b:2,"})
    assert args.management_addr == (Addr("a", 1), Addr("b", 2))


@pytest.mark.parametrize(
    ("env", "file_text", "message"),
    [
        ({"CORRAL_MAX_BUFFERED_REQUESTS": "x"}, "", "CORRAL_MAX_BUFFERED_REQUESTS: 'x' is not a"),
        ({"CORRAL_LOG_LEVEL": "loud"}, "", "CORRAL_LOG_LEVEL: invalid choice: 'loud'"),
        ({}, "heartbeat_timeout = -1\n", "heartbeat_timeout: '-1' must be greater than 0"),
        ({}, "inference_adr = '1:1'\n", "balancer has no setting 'inference_adr'"),
        ({}, "api_key = 5\n", ""),  # a number is a fine key text
        ({}, "agent_token = ['a']\n", 'agent_token: ["a"] is not a single value'),
        # said as the file spells it, not as Python prints it (True, ['a'])
        ({}, "max_buffered_requests = true\n", "max_buffered_requests: true is not a single"),
        ({}, "cors_credentials = 1.5\n", "cors_credentials: 1.5 is not true or false"),
        ({}, "inference_addr = \n", "is not valid TOML"),
        # given where it means nothing: refused, not ignored
        ({"CORRAL_PREFIX_MAX_WAIT": "2"}, "",
         "--prefix-max-wait (env CORRAL_PREFIX_MAX_WAIT) applies only with --routing prefix"),
        ({}, "routing = 'slots'\nprefix_max_pass = 2\n", "--routing is 'slots' (file "),
        ({"CORRAL_ROUTING": "prefix"}, "prefix_max_pass = 2\n", ""),
        ({"CORRAL_QUEUE": "fair"}, "interactive_reserve = 0.5\n", ""),
        ({}, "prefix_max_wait = 10.0\n", ""),  # its default: as --print-config writes it
        ({}, "interactive_reserve = 0.5\n",
         "--interactive-reserve (file "),
    ],
)  # fmt: skip
def test_bad_env_and_file_values_name_their_source(tmp_path, env, file_text, message, capsys):
    file = tmp_path / "b.toml"
    file.write_text(file_text)
    argv = ["balancer", "--config", str(file)]
    if not message:
        parse_args(argv, environ=env)
        return
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, environ=env)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_values_are_a_clear_error_from_main(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CORRAL_HEARTBEAT_TIMEOUT", "soon")
    with pytest.raises(SystemExit) as exit_info:
        main(["balancer"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: CORRAL_HEARTBEAT_TIMEOUT: 'soon' is not a number" in err
    monkeypatch.delenv("CORRAL_HEARTBEAT_TIMEOUT")
    with pytest.raises(SystemExit):
        main(["balancer", "--config", str(tmp_path / "missing.toml")])
    err = capsys.readouterr().err
    assert "cannot read config file" in err and "Traceback" not in err


# ------------------------------------------------------------ files
SAMPLES = {
    "balancer": [
        "--inference-addr", "[::1]:9000", "--max-buffered-requests", "0",
        "--buffered-request-timeout", "0.25", "--agent-token", 'se"cr\\et\n\u00e9',
        "--api-key", "k1", "--api-key", "k2", "--state-file", "/tmp/state dir/s.json",
        "--rollout-share", "0.5", "--statsd-addr", "stats:8125", "--log-format", "json",
    ],
    "agent": [
        "--model", "bundled", "--threads", "3", "--llamacpp-port", "8081", "--quiet-server",
        "--management-addr", "a:1", "--management-addr", "b:2", "--name", "gpu\t3 \U0001f600",
        "--probe-addr", "0.0.0.0:8079", "--poll-interval", "1e-3", "--slots-gap", "2.5",
    ],
}  # fmt: skip


@pytest.mark.parametrize("command", ["balancer", "agent"])
@pytest.mark.parametrize("sample", [False, True])
def test_render_then_load_gives_the_same_settings(tmp_path, command, sample):
    argv = [command, *(SAMPLES[command] if sample else [])]
    schema = SCHEMAS[command]
    resolved = parse_args(argv, environ={}).resolved
    text = config_files.render(schema, resolved, show_secrets=True)
    file = tmp_path / "settings.toml"
    file.write_text(text)
    again = parse_args([command, "--config", str(file)], environ={}).resolved
    assert again.values == resolved.values


def test_printed_configs_hide_secrets_and_say_where_values_came_from(monkeypatch, capsys):
    monkeypatch.setenv("CORRAL_AGENT_TOKEN", "hunter2")
    monkeypatch.setenv("CORRAL_STATSD_PREFIX", "fleet")
    assert main(["balancer", "--print-config", "--max-body-size", "10"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "# agent_token = (set; not shown)  # from env CORRAL_AGENT_TOKEN" in out
    assert 'statsd_prefix = "fleet"  # from env CORRAL_STATSD_PREFIX' in out
    assert "max_body_size = 10  # from command line" in out
    assert "# flag --inference-addr, env CORRAL_INFERENCE_ADDR" in out
    data = tomllib.loads(out)
    assert data["inference_addr"] == "127.0.0.1:8061" and "agent_token" not in data


def test_print_config_needs_no_complete_agent(capsys):
    assert main(["agent", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "# management_addr =" in out and "poll_interval = 0.5" in out


# ------------------------------------------------------------ help
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("balancer", ["(default: 127.0.0.1:8061) [env CORRAL_INFERENCE_ADDR]",
                      "(default: 30) [env CORRAL_BUFFERED_REQUEST_TIMEOUT]",
                      "[env CORRAL_AGENT_TOKEN]", "--config FILE", "--print-config",
                      "highest first"]),
        ("agent", ["(default: 2) [env CORRAL_SLOTS]", "(default: 0.5) [env CORRAL_POLL_INTERVAL]",
                   "(default: off) [env CORRAL_PROBE_ADDR]", "[env CORRAL_LLAMACPP_PORT]",
                   "--config FILE"]),
    ],
)  # fmt: skip
def test_help_shows_env_names_and_defaults(command, expected, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("CORRAL_AGENT_TOKEN", "hunter2")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in expected:
        assert text in out
    assert "hunter2" not in out


def test_help_shows_a_default_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("CORRAL_SIM_SLOTS", "7")
    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    assert "(default: 7) [env CORRAL_SIM_SLOTS]" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------ the parts
def test_a_schema_refuses_a_setting_declared_twice():
    with pytest.raises(ValueError, match="declared twice"):
        Schema("x", "X_", (Setting("a", "one"), Setting("a", "two")))


def test_a_schema_refuses_only_with_a_setting_or_value_it_lacks():
    choice = Setting("mode", "how", default="a", choices=("a", "b"))
    with pytest.raises(ValueError, match="only_with"):
        Schema("x", "X_", (choice, Setting("k", "knob", only_with=("nothing", ("a",)))))
    with pytest.raises(ValueError, match="only_with"):
        Schema("x", "X_", (choice, Setting("k", "knob", only_with=("mode", ("c",)))))


def test_switches_take_words_and_refuse_others():
    s = Setting("quiet", "q", switch=True)
    assert [s.parse_text(w) for w in ("1", "TRUE", "on", "0", "no", "")] == [
        True, True, True, False, False, False,
    ]  # fmt: skip
    with pytest.raises(argparse.ArgumentTypeError, match="is not one of"):
        s.parse_text("maybe")


def test_positive_refuses_nan_and_zero():
    parse = positive(float)
    for text in ("0", "-1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert parse("0.5") == 0.5


def test_toml_values_cover_every_setting_type():
    assert config_files.toml_value(Path("/a b")) == '"/a b"'
    assert config_files.toml_value(Addr("::1", 80)) == '"[::1]:80"'
    assert config_files.toml_value((Addr("a", 1),)) == '["a:1"]'
    assert config_files.toml_value(float("inf")) == "inf"
    assert tomllib.loads("x = " + config_files.toml_value('\x7f\x00"\\'))["x"] == '\x7f\x00"\\'
    with pytest.raises(TypeError):
        config_files.toml_value(object())


def test_a_negatable_switch_takes_its_no_flag():
    """``--no-cors-credentials`` as llama-server spells it; the last flag given wins."""
    parser = argparse.ArgumentParser()
    for s in BALANCER:
        add_argument(parser, s)
    assert parser.parse_args(["--cors-credentials"]).cors_credentials is True
    assert parser.parse_args(["--no-cors-credentials"]).cors_credentials is False
    assert "cors_credentials" not in vars(parser.parse_args([]))


def test_the_runner_choices_are_the_registered_runners():
    from corral.agent.runners import RUNNERS

    (runner,) = [s for s in AGENT if s.name == "runner"]
    assert set(runner.choices) == set(RUNNERS)
    assert runner.default in RUNNERS


def _secrets() -> list[tuple[str, Setting]]:
    return [(command, s) for command, schema in SCHEMAS.items() for s in schema if s.secret]


@pytest.mark.parametrize(("command", "setting"), _secrets(), ids=lambda v: getattr(v, "name", v))
@pytest.mark.parametrize("text", ["", "  "])
def test_an_empty_secret_is_refused_wherever_it_comes_from(
    command: str, setting: Setting, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty token or key would turn its check off without a word (a secret that
    failed to mount, an unset variable in a compose file): refused on the command
    line, in the environment (a repeatable one's list too) and in a config file."""
    if setting.repeatable:
        with pytest.raises(argparse.ArgumentTypeError, match="empty secret"):
            setting.parse_text("k1, ," + text)
    for where, argv, environ in [
        ("command line", [command, f"{setting.flag}={text}"], {}),
        ("env", [command], {setting.env: text}),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            parse_args(argv, environ=environ)
        assert exit_info.value.code == 2, where
        err = capsys.readouterr().err
        assert "an empty secret would turn its check off" in err, (where, err)
        assert "Traceback" not in err
    if command in ("balancer", "agent"):  # the commands with config files
        file = tmp_path / "c.toml"
        file.write_text(f'{setting.name} = "{text}"\n')
        with pytest.raises(SystemExit):
            parse_args([command, "--config", str(file)], environ={})
        assert "an empty secret would turn its check off" in capsys.readouterr().err


def test_bench_refuses_an_empty_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["bench", "http://127.0.0.1:1"], environ={"CORRAL_BENCH_API_KEY": ""})
    assert "CORRAL_BENCH_API_KEY: is empty: an empty secret" in capsys.readouterr().err


def test_the_shared_prefix_is_not_policed() -> None:
    """``CORRAL_`` is shared by the balancer, the agent, top and tools (CORRAL_CONFIG,
    CORRAL_CACHE_DIR...): another command's variable is no mistake there."""
    args = parse_args(["balancer"], environ={"CORRAL_MODEL": "x", "CORRAL_CACHE_DIR": "/c"})
    assert args.command == "balancer"


@pytest.mark.parametrize(
    ("argv", "env", "prefix"),
    [
        (["balancer", "--bogus"], {}, "corral balancer: error: unrecognized arguments: --bogus"),
        (["agent"], {"CORRAL_POLL_INTERVAL": "soon"}, "corral agent: error: CORRAL_POLL_INTERVAL"),
        (["k8s", "drain", "h:1", "--what"], {}, "corral k8s drain: error: unrecognized arguments"),
        (["bench", "http://h:1", "--userz", "2"], {}, "corral bench: error: unrecognized"),
        # a variable under a command's own prefix that it does not read (a typo, a flag
        # that has no variable) was ignored without a word
        (["sim"], {"CORRAL_SIM_SLOT": "3"}, "corral sim: error: CORRAL_SIM_SLOT: corral sim has "
         "no such setting (it reads CORRAL_SIM_ADDR, "),
        (["up"], {"CORRAL_UP_AGENT": "3"}, "CORRAL_UP_AGENT: corral up has no such setting"),
        (["bench", "http://h:1"], {"CORRAL_BENCH_USERS": "abc", "CORRAL_BENCH_REQUESTS": "3"},
         "CORRAL_BENCH_REQUESTS, CORRAL_BENCH_USERS: corral bench has no such setting (it reads "
         "CORRAL_BENCH_API, CORRAL_BENCH_API_KEY, CORRAL_BENCH_MODEL"),
    ],
)  # fmt: skip
def test_errors_are_said_by_the_commands_own_parser(
    argv: list[str], env: dict[str, str], prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With its usage line, not the top level's (``corral [-h] [--version] COMMAND``)."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, environ=env)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert prefix in err and f"usage: corral {argv[0]}" in err


@pytest.mark.parametrize("text", ["-3", "2", "nan", "1.01"])
def test_a_share_outside_0_to_1_is_refused_not_clamped(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--rollout-share -3`` printed ``rollout_share = 0.0``, 2 became 1.0."""
    with pytest.raises(SystemExit):
        parse_args(["balancer", "--rollout-share", text])
    assert f"argument --rollout-share: {text!r} must be from 0 to 1" in capsys.readouterr().err
    assert parse_args(["balancer", "--rollout-share", "1"]).rollout_share == 1.0


def test_a_default_of_zero_is_shown_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    """0 == False: a zero default was taken for "no default" and not shown."""
    with pytest.raises(SystemExit):
        parse_args(["balancer", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "0 is one by one) (default: 0) [env CORRAL_ROLLOUT_SHARE]" in out


def test_cache_ram_takes_mib_0_or_minus_1(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["agent", "--model", "bundled", "--management-addr", "b:1", "--cache-ram"]
    assert [parse_args([*base, v]).cache_ram for v in ("-1", "0", "256")] == [-1, 0, 256]
    with pytest.raises(SystemExit):
        parse_args([*base, "-5"])
    assert "'-5': give MiB, 0 (off) or -1 (no limit)" in capsys.readouterr().err

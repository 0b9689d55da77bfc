"""The command line: flags, environment variables, clear errors."""

import pytest

from corral.addr import Addr
from corral.bench.workload import WorkloadSpec
from corral.cli import _balancer_config, main, parse_args


def test_flags_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CORRAL_INFERENCE_ADDR", "0.0.0.0:9000")
    monkeypatch.setenv("CORRAL_API_KEY", "a, b")
    monkeypatch.setenv("CORRAL_MAX_BUFFERED_REQUESTS", "7")
    args = parse_args(["balancer"])
    assert args.inference_addr == Addr("0.0.0.0", 9000)
    assert args.api_key == ("a", "b")
    assert args.max_buffered_requests == 7


def test_command_line_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("CORRAL_INFERENCE_ADDR", "0.0.0.0:9000")
    args = parse_args(["balancer", "--inference-addr", "127.0.0.1:1"])
    assert args.inference_addr == Addr("127.0.0.1", 1)


def test_sim_has_its_own_namespace(monkeypatch):
    monkeypatch.setenv("CORRAL_SIM_SLOTS", "3")
    monkeypatch.setenv("CORRAL_API_KEY", "balancer-key")
    args = parse_args(["sim"])
    assert args.slots == 3 and args.api_key is None


def test_sim_takes_its_prompt_cache_from_flags():
    from corral.config.schema import build
    from corral.sim import SimConfig

    args = parse_args(["sim", "--host-cache-tokens", "8192", "--prompt-tokens-per-second", "500"])
    config = build(SimConfig, vars(args), api_key=None)
    assert (config.host_cache_tokens, config.prompt_tokens_per_second) == (8192, 500.0)


def test_up_passes_its_routing_to_its_balancer(tmp_path):
    from corral.config.schema import build
    from corral.up import Fleet, UpConfig

    config = build(UpConfig, vars(parse_args(["up", "--routing", "prefix"])))
    assert config.routing == "prefix"
    fleet = Fleet(config, tmp_path / "llama-server", tmp_path / "m.gguf")
    commands = dict(fleet.commands())
    balancer = commands.pop("balancer")
    assert balancer[balancer.index("--routing") + 1] == "prefix"
    assert sorted(commands) == ["agent-0", "agent-1"]
    assert all("--routing" not in argv for argv in commands.values())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["balancer", "--inference-addr", "nowhere"], "expected HOST:PORT"),
        (["balancer", "--buffered-request-timeout", "-1"], "must be greater than 0"),
        (["balancer", "--max-buffered-requests", "lots"], "not a whole number"),
        (["agent", "--local-llamacpp-addr", "127.0.0.1:8080"], "--management-addr"),
        (
            [
                "agent",
                "--management-addr",
                "b:1",
                "--local-llamacpp-addr",
                "h:1",
                "--llamacpp-port",
                "8081",
            ],
            "--llamacpp-port is for a supervised server",
        ),
        (["agent", "--llamacpp-port", "70000"], "out of range 1-65535"),
        (["agent", "--probe-addr", "nowhere"], "expected HOST:PORT"),
        (["agent", "--runner", "tgi"], "invalid choice"),
        (["agent", "--concurrency", "0"], "must be greater than 0"),
        (
            ["agent", "--management-addr", "b:1", "--model", "bundled", "--runner", "vllm"],
            "to run a vllm server, give its command after --",
        ),
        (
            [
                "agent",
                "--management-addr",
                "b:1",
                "--server-addr",
                "h:1",
                "--local-llamacpp-addr",
                "h:2",
            ],
            "they are one setting",
        ),
        (
            ["agent", "--management-addr", "b:1", "--runner", "vllm", "--", "vllm", "serve"],
            "give --server-addr",
        ),
        (["agent", "--reconnect-max", "0"], "must be greater than 0"),
        (["agent", "--reconnect-min", "soon"], "not a number"),
        (["agent", "--reconnect-max", "inf"], "'inf' is not a finite number"),
        # every positive number refuses them, not only those fd73e6f named: an endless
        # --buffered-request-timeout sent "timeout_s": Infinity (not JSON) to the API
        (["balancer", "--buffered-request-timeout", "inf"], "'inf' is not a finite number"),
        (["balancer", "--shutdown-timeout", "nan"], "'nan' is not a finite number"),
        (["sim", "--tokens-per-second", "inf"], "'inf' is not a finite number"),
        (
            [
                "agent",
                "--management-addr",
                "b:1",
                "--server-addr",
                "h:1",
                "--reconnect-min",
                "5",
                "--reconnect-max",
                "2",
            ],
            "must start above 0 and not exceed its cap: --reconnect-min 5 s, --reconnect-max 2 s",
        ),
        (["launch"], "invalid choice"),
        (["bench", "http://x", "--users", "0"], "must be at least 1"),
        (["bench", "http://x", "--users", "2", "--rate", "3"], "not allowed with argument"),
        (["bench", "http://x", "--rate", "fast"], "not a number"),
        # inf was taken: --rate inf ended in a traceback, --duration inf never ended
        (["bench", "http://x", "--rate", "inf"], "'inf' is not a finite number"),
        (["bench", "http://x", "--duration", "inf"], "'inf' is not a finite number"),
        (["bench", "http://x", "--stream-share", "nan"], "'nan' is not a finite number"),
        (["balancer", "--prefix-max-wait", "nan"], "'nan' is not a finite number"),
        (["balancer", "--prefix-max-wait", "inf"], "'inf' is not a finite number"),
        (["bench", "http://x", "--workload", "zipf"], "invalid choice"),
        # a setting that means nothing under the others given was taken and ignored
        (
            ["balancer", "--prefix-max-wait", "3"],
            "--prefix-max-wait (command line) applies only with --routing prefix; "
            "--routing is 'slots' (default)",
        ),
        (
            ["balancer", "--routing", "slots", "--prefix-max-pass", "3"],
            "--routing is 'slots' (command line)",
        ),
        (
            ["balancer", "--queue", "fifo", "--priority-aging", "3"],
            "--priority-aging (command line) applies only with --queue priority or --queue fair",
        ),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code not in (0, None)
    captured = capsys.readouterr()
    assert message in captured.err + str(exit_info.value.code)
    assert "Traceback" not in captured.err


def test_api_key_file(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text("# clients\nk1\n\nk2\n")
    from corral import cli

    captured = {}

    async def fake_run(config):
        captured["config"] = config

    monkeypatch.setattr("corral.balancer.run", fake_run)
    args = parse_args(["balancer", "--api-key", "k0", "--api-key-file", str(keys)])
    coro = cli._run_balancer(args)
    import asyncio

    asyncio.run(coro)
    assert captured["config"].api_keys == ("k0", "k1", "k2")


def test_api_key_file_in_toml_names_tenants(tmp_path, monkeypatch):
    keys = tmp_path / "keys.toml"
    keys.write_text('[[tenant]]\nname = "chat"\nkey = "sk-c"\nmax_concurrent = 2\n')
    args = parse_args(["balancer", "--api-key", "k0", "--api-key-file", str(keys)])
    config = _balancer_config(args)
    assert config.api_keys == ("k0",)
    [entry] = config.tenant_keys
    assert entry.tenant.name == "chat" and entry.tenant.max_concurrent == 2


def test_bad_toml_keys_file_is_a_clear_error(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text('[[tenant]]\nname = "chat"\n')
    with pytest.raises(SystemExit, match="exactly one of key"):
        _balancer_config(parse_args(["balancer", "--api-key-file", str(keys)]))


def test_missing_api_key_file_is_a_clear_error(tmp_path):
    args = parse_args(["balancer", "--api-key-file", str(tmp_path / "nope")])
    from corral import cli

    with pytest.raises(SystemExit, match="cannot read --api-key-file"):
        cli._run_balancer(args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "localhost:8061"], "must start with http://"),
        (["bench", "http://127.0.0.1:1", "--stream-share", "2"], "between 0 and 1"),
        (["bench", "http://127.0.0.1:1", "--output-tokens", "9", "--max-output-tokens", "5"],
         "above the cap"),
        # a flag the workload does not use is refused, not ignored
        (["bench", "http://127.0.0.1:1", "--turns", "3"],
         "--turns is for --workload multi-turn, not fixed"),
        (["bench", "http://127.0.0.1:1", "--workload", "multi-turn", "--groups", "2"],
         "--groups is for --workload shared-prefix, not multi-turn"),
        (["bench", "http://127.0.0.1:1", "--workload", "multi-turn", "--prefix-tokens", "9"],
         "--prefix-tokens is for --workload shared-prefix or no-sharing, not multi-turn"),
        (["bench", "http://127.0.0.1:1", "--tail-sigma", "0.5"], "--tail-sigma is for --workload"),
        (["bench", "http://127.0.0.1:1", "--history", "served"], "--history is for --workload"),
        # an output that cannot be written is said before the run, naming its flag
        (["bench", "http://127.0.0.1:1", "--json", "/proc/no-such-dir/x.json"],
         "--json: cannot write into /proc/no-such-dir"),
    ],
)  # fmt: skip
def test_bench_refuses_plans_that_cannot_work(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_defaults_to_a_short_closed_loop():
    from corral.bench.command import plan

    target, spec, load = plan(parse_args(["bench", "http://h:1/"]))
    assert target.endpoint == "http://h:1/v1/chat/completions"
    assert (load.users, load.rate, load.requests, load.duration) == (4, None, 100, None)
    assert spec.shape == "fixed"
    assert spec == WorkloadSpec(shape="fixed")  # the workload's own defaults


def test_bench_passes_each_workloads_own_flags():
    from corral.bench.command import plan

    argv = ["bench", "http://h:1/", "--workload", "multi-turn", "--turns", "3", "--sessions", "2"]
    _, spec, _ = plan(parse_args([*argv, "--history", "served", "--tail-sigma", "0.5"]))
    assert (spec.turns, spec.sessions, spec.history, spec.tail_sigma) == (3, 2, "served", 0.5)
    argv = ["bench", "http://h:1/", "--workload", "shared-prefix", "--group-users", "3"]
    _, spec, _ = plan(parse_args([*argv, "--groups", "5", "--prefix-tokens", "7"]))
    assert (spec.groups, spec.users, spec.prefix_tokens) == (5, 3, 7)


def test_a_supervised_server_that_sleeps_is_not_kept_awake_by_slots_reads():
    from corral.cli import _sleep_idle_seconds

    assert _sleep_idle_seconds(["--flash-attn", "on", "--sleep-idle-seconds", "300"]) == 300
    assert _sleep_idle_seconds(["--sleep-idle-seconds=60"]) == 60
    assert _sleep_idle_seconds(["--sleep-idle-seconds", "-1"]) == 0  # llama.cpp: disabled
    assert _sleep_idle_seconds(["--sleep-idle-seconds"]) == 0
    assert _sleep_idle_seconds([]) == 0


def test_a_command_after_dashes_is_the_server_the_agent_runs(monkeypatch):
    """Supervisor mode for any runner: the command as given, read where it listens."""
    from corral import cli
    from corral.agent.supervisor import CommandSettings, Supervisor

    captured = {}

    async def fake_run(config, server=None, copy=None):
        captured.update(config=config, server=server)

    monkeypatch.setattr("corral.agent.run", fake_run)
    argv = ["agent", "--management-addr", "b:1", "--runner", "openai"]
    argv += ["--server-addr", "127.0.0.1:8123"]
    args = parse_args(argv)
    args.extra = ["python", "-m", "corral", "sim"]  # what main() finds after --
    import asyncio

    asyncio.run(cli._run_agent(args))
    server, config = captured["server"], captured["config"]
    assert isinstance(server, Supervisor)
    assert server.settings == CommandSettings(
        command=("python", "-m", "corral", "sim"), port=8123, ready_path="/v1/models"
    )
    assert config.local_llamacpp_addr == Addr("127.0.0.1", 8123)
    assert config.runner == "openai"


def test_the_old_address_flag_still_names_the_server(monkeypatch):
    from corral import cli

    captured = {}

    async def fake_run(config, server=None, copy=None):
        captured.update(config=config, server=server)

    monkeypatch.setattr("corral.agent.run", fake_run)
    import asyncio

    args = parse_args(["agent", "--management-addr", "b:1", "--local-llamacpp-addr", "h:7"])
    args.extra = []
    asyncio.run(cli._run_agent(args))
    assert captured["server"] is None
    assert captured["config"].local_llamacpp_addr == Addr("h", 7)


def test_the_reconnect_backoff_reaches_the_agent_from_flags_and_environment(monkeypatch):
    from corral import cli

    captured = {}

    async def fake_run(config, server, copy):
        captured["config"] = config

    monkeypatch.setattr("corral.agent.run", fake_run)
    monkeypatch.setenv("CORRAL_RECONNECT_MIN", "0.5")
    argv = ["agent", "--management-addr", "b:1", "--server-addr", "h:1", "--reconnect-max", "3"]
    import asyncio

    def agent_args(argv):
        args = parse_args(argv)
        args.extra = []  # what main sets: the arguments after --
        return args

    asyncio.run(cli._run_agent(agent_args(argv)))
    assert (captured["config"].reconnect_min, captured["config"].reconnect_max) == (0.5, 3.0)
    asyncio.run(cli._run_agent(agent_args(argv[:-2])))
    assert (captured["config"].reconnect_min, captured["config"].reconnect_max) == (0.5, 10.0)


def test_a_lora_adapter_that_is_not_there_stops_the_agent_at_once(tmp_path):
    """It was passed on, and the supervised server failed to start again and again."""
    from corral import cli

    model, binary = tmp_path / "m.gguf", tmp_path / "llama-server"
    model.write_bytes(b"GGUF")
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    adapter = tmp_path / "a.gguf"
    argv = ["agent", "--model", str(model), "--llama-server", str(binary)]
    argv += ["--management-addr", "b:1", "--lora", f"a={adapter}"]
    args = parse_args(argv)
    args.extra = []
    with pytest.raises(SystemExit, match=f"--lora a={adapter}: no such adapter file"):
        cli._supervised_server(args)
    adapter.write_bytes(b"GGUF")
    supervisor, _ = cli._supervised_server(args)
    assert supervisor.settings.lora == (("a", adapter),)


@pytest.mark.parametrize("command", ["balancer", "up"])
def test_the_two_listeners_on_one_port_are_refused_by_name(command):
    """The second bind failed with only "address already in use"."""
    argv = [command, "--inference-addr", "127.0.0.1:9000", "--management-addr", "0.0.0.0:9000"]
    with pytest.raises(SystemExit, match="share a port; give each its own"):
        main(argv)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["up"], {"CORRAL_LLAMA_SERVER": "/no/such/llama-server"},
         "corral up: /no/such/llama-server is not an executable file"),
        (["up", "--model", "/no/such/model.gguf"], {"CORRAL_LLAMA_SERVER": "STUB"},
         "corral up: model file not found: /no/such/model.gguf"),
    ],
)  # fmt: skip
def test_up_says_what_is_missing_before_it_starts_anything(
    argv, env, message, monkeypatch, tmp_path, capsys
):
    """A missing llama-server was a traceback; a missing model was said after "Starting
    a balancer..." and left a log folder behind."""
    stub = tmp_path / "llama-server"  # found, never run: the model is what is missing
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    for name, value in env.items():
        monkeypatch.setenv(name, str(stub) if value == "STUB" else value)
    logs = tmp_path / "tmp"
    logs.mkdir()
    monkeypatch.setenv("TMPDIR", str(logs))  # where the log folder would go
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(SystemExit, match=message):
        main(argv)
    assert "Starting" not in capsys.readouterr().out
    assert list(logs.iterdir()) == []

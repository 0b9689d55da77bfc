"""The ``corral`` command and its subcommands.

Every setting is declared once, in :mod:`corral.config.tables`; the flags, their
environment variables and the config files are generated from there. A setting comes
from, highest first: the command line, the environment (``--inference-addr`` reads
``CORRAL_INFERENCE_ADDR``; repeatable flags take a comma-separated list there), the
``--config`` file (``corral balancer`` and ``corral agent``), its default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from corral import __version__
from corral.config import AGENT, BALANCER, COMMON, SIM, TOP, UP, ConfigError, Schema, Setting
from corral.config import files as config_files
from corral.config.schema import add_argument, build

log = logging.getLogger("corral")

_PRECEDENCE = (
    "Each setting comes from, highest first: the command line, the environment (the "
    "[env ...] after each flag; a repeatable flag takes a comma-separated list there), "
    "the --config file, the default."
)


def _command(
    sub: Any,
    schema: Schema,
    environ: Mapping[str, str],
    *,
    config_files: bool = False,
    **kw: Any,
) -> argparse.ArgumentParser:
    """A subcommand whose flags are its schema's settings (``config_files``: with
    ``--config`` and ``--print-config``)."""
    if config_files:
        kw.setdefault("epilog", _PRECEDENCE)
    p: argparse.ArgumentParser = sub.add_parser(schema.command, **kw)
    schema.add_arguments(p, environ)
    if config_files:
        group = p.add_argument_group("configuration file (TOML)")
        group.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="read settings from this file; write one with --print-config [env CORRAL_CONFIG]",
        )
        group.add_argument(
            "--print-config",
            action="store_true",
            help="print the effective settings as a config file, with where each came "
            "from, and exit (secrets are not printed)",
        )
    p.set_defaults(schema=schema, config_files=config_files, command_parser=p)
    return p


class _JsonFormatter(logging.Formatter):
    """One JSON object per record; a record's ``fields`` (request logs) are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


# ---------------------------------------------------------------- balancer
def _balancer_parser(sub: Any, environ: Mapping[str, str]) -> None:
    p = _command(
        sub,
        BALANCER,
        environ,
        config_files=True,
        help="run a balancer",
        description=(
            "Run a balancer. Applications send llama.cpp / OpenAI requests to the "
            "inference address; agents register on the management address. The "
            "balancer sends each request to a server with a free slot and holds it in a "
            "bounded buffer while none is free."
        ),
    )
    p.set_defaults(func=_run_balancer)


def _run_balancer(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.balancer import run

    return run(_balancer_config(args))


def _balancer_config(args: argparse.Namespace) -> Any:
    from corral.balancer import BalancerConfig

    if args.tls_key is not None and args.tls_cert is None:
        raise SystemExit("corral balancer: --tls-key needs --tls-cert")
    _distinct_listeners("balancer", args)
    from corral.config.keys import KeyEntry, Keys, KeysError, parse_keys
    from corral.core.queueing import Tenant

    keys = list(args.api_key)
    tenant_keys = []
    if args.api_key_file is not None:
        try:
            text = args.api_key_file.read_text()
        except OSError as exc:
            raise SystemExit(f"corral balancer: cannot read --api-key-file: {exc}") from None
        toml = True if args.api_key_file.suffix == ".toml" else None
        try:
            entries = parse_keys(text, toml=toml)
        except KeysError as exc:
            raise SystemExit(
                f"corral balancer: --api-key-file {args.api_key_file}: {exc}"
            ) from None
        for entry in entries:
            if entry.key is not None and entry.tenant == Tenant():
                keys.append(entry.key)  # one key per line: the default tenant's
            else:
                tenant_keys.append(entry)
    try:  # the keys all together (--api-key's are the default tenant's)
        Keys([*(KeyEntry(Tenant(), key=k) for k in keys), *tenant_keys])
    except KeysError as exc:
        raise SystemExit(f"corral balancer: --api-key, --api-key-file: {exc}") from None
    return build(
        BalancerConfig,
        vars(args),
        agent_token=args.agent_token or None,
        management_token=args.management_token or None,
        api_keys=tuple(keys),
        tenant_keys=tuple(tenant_keys),
        scaled_models=tuple(args.scaled_model),
        state_file=args.state_file or _default_state_file(args.management_addr.port),
        state_file_required=args.state_file is not None,
    )


def _default_state_file(port: int) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "corral" / f"desired-state-{port}.json"


# ------------------------------------------------------------------- agent
def _agent_parser(sub: Any, environ: Mapping[str, str]) -> None:
    p = _command(
        sub,
        AGENT,
        environ,
        config_files=True,
        help="run an agent beside a llama-server (or running one)",
        usage=("corral agent [options] [-- extra llama-server arguments | -- server command]"),
        description=(
            "Watch one server (llama-server: its /health, /slots and /props; other "
            "runners: docs/runners.md) and report it to one or more balancers, which then "
            "send it requests. Attach mode: --server-addr (or --local-llamacpp-addr) "
            "names a running server. Supervisor mode: --model makes the agent start "
            "llama-server itself, restart it after a crash and stop it when the agent "
            "stops; arguments after -- go to llama-server. Supervisor mode for any "
            "runner: without --model, a command after -- is the server to run, and "
            "--server-addr says where it listens (corral agent --runner vllm "
            "--server-addr 127.0.0.1:8000 -- vllm serve MODEL --port 8000)."
        ),
    )
    p.set_defaults(func=_run_agent)


def _run_agent(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.agent import AgentConfig, run

    if not args.management_addr:
        raise SystemExit("corral agent: give at least one --management-addr (a balancer)")
    where = _server_addr(args)
    if (where is None) == (args.model is None):
        raise SystemExit(
            "corral agent: give --server-addr (a running server, or where the command after "
            "-- makes one listen) or --model (the agent runs llama-server itself), not both"
        )
    if args.model is not None and args.runner != "llamacpp":
        raise SystemExit(
            f"corral agent: --model runs llama-server; to run a {args.runner} server, give "
            "its command after -- and --server-addr HOST:PORT where it listens "
            "(docs/runners.md)"
        )
    if args.llamacpp_port is not None and args.model is None:
        raise SystemExit("corral agent: --llamacpp-port is for a supervised server (--model)")
    if args.reconnect_max < args.reconnect_min:
        from corral.agent.agent import reconnect_error

        raise SystemExit(f"corral agent: {reconnect_error(args.reconnect_min, args.reconnect_max)}")
    import socket

    server = copy = None
    if args.model is not None:
        server, copy = _supervised_server(args)
        name = args.name or f"{socket.gethostname()}:{Path(args.model).stem}"
    else:
        assert where is not None
        if args.extra:  # supervisor mode for any runner: the command after --
            server = _command_server(args, where)
        name = args.name or f"{socket.gethostname()}:{where.port}"
    idle = args.idle_slots_interval
    sleep = _sleep_idle_seconds(args.extra)
    if sleep > 0 and 0 < idle < sleep:
        log.info(
            "the server sleeps after %gs idle: /slots is not read while it is idle "
            "(--idle-slots-interval %g would keep it awake)",
            sleep,
            idle,
        )
        idle = 0.0
    config = build(
        AgentConfig,
        vars(args),
        idle_slots_interval=idle,
        management_addrs=tuple(args.management_addr),
        local_llamacpp_addr=where,
        name=name,
        llamacpp_api_key=args.llamacpp_api_key or None,
        agent_token=args.agent_token or None,
    )
    return run(config, server, copy)


def _server_addr(args: argparse.Namespace) -> Any:
    """``--server-addr`` or its older name ``--local-llamacpp-addr`` (None: neither)."""
    new, old = args.server_addr, args.local_llamacpp_addr
    if new is not None and old is not None and new != old:
        raise SystemExit(
            f"corral agent: --server-addr {new} and --local-llamacpp-addr {old} differ; "
            "they are one setting (give one)"
        )
    return new if new is not None else old


def _command_server(args: argparse.Namespace, where: Any) -> Any:
    """A supervisor for the server the command after ``--`` runs, read at ``where``."""
    from corral.agent.runners import RUNNERS
    from corral.agent.supervisor import CommandSettings, Supervisor

    settings = CommandSettings(
        command=tuple(args.extra),
        port=where.port,
        host=where.host,
        ready_path=RUNNERS[args.runner].ready_path,
    )
    return Supervisor(
        settings,
        name=args.name or f"{settings.program}:{where.port}",
        log_server_output=not args.quiet_server,
    )


def _sleep_idle_seconds(extra: Sequence[str]) -> float:
    """The ``--sleep-idle-seconds`` among a supervised server's arguments (0: none)."""
    for index, arg in enumerate(extra):
        text = None
        if arg == "--sleep-idle-seconds" and index + 1 < len(extra):
            text = extra[index + 1]
        elif arg.startswith("--sleep-idle-seconds="):
            text = arg.split("=", 1)[1]
        if text is not None:
            try:
                return max(0.0, float(text))
            except ValueError:
                return 0.0
    return 0.0


def _supervised_server(args: argparse.Namespace) -> tuple[Any, Any]:
    """The supervisor of ``--model``, and the model's copy into the cache to make before
    it starts (None: nothing to copy); the agent makes it, reporting its progress."""
    from corral.agent.supervisor import ServerSettings, Supervisor, default_cache_ram_mib
    from corral.llamacpp import LlamaCppNotFound, llama_server_path
    from corral.llamacpp.sources import ModelSourceError, plan

    try:
        model, copy = plan(args.model)
        binary = llama_server_path(args.llama_server)
    except (ModelSourceError, LlamaCppNotFound) as exc:
        raise SystemExit(f"corral agent: --model {args.model}: {exc}") from None
    for name, path in args.lora:  # said now, not by a server that fails to start again and again
        if not Path(path).is_file():
            raise SystemExit(f"corral agent: --lora {name}={path}: no such adapter file")
    settings = ServerSettings(
        model=model,
        slots=args.slots,
        ctx_size=args.ctx_size,
        threads=args.threads,
        cache_ram_mib=default_cache_ram_mib() if args.cache_ram is None else args.cache_ram,
        extra_args=tuple(args.extra),
        lora=tuple((name, Path(path)) for name, path in args.lora),
        binary=binary,
        api_key=args.llamacpp_api_key or None,
        port=args.llamacpp_port,
        host=args.llamacpp_host,
        alias=args.model_alias or None,
    )
    server = Supervisor(
        settings, name=args.name or model.stem, log_server_output=not args.quiet_server
    )
    return server, copy


# --------------------------------------------------------------------- sim
def _sim_parser(sub: Any, environ: Mapping[str, str]) -> None:
    p = _command(
        sub,
        SIM,
        environ,
        help="run a simulated llama-server (for tests and benchmarks)",
        description=(
            "A simulated llama-server: realistic /health, /slots, /props and streamed "
            "completions whose speed drops as more slots are busy. No model, no GPU."
        ),
    )
    p.set_defaults(func=_run_sim)


def _run_sim(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.sim import SimConfig, serve

    config = build(SimConfig, vars(args), api_key=args.api_key or None)
    return serve(config, args.addr.host, args.addr.port)


# ---------------------------------------------------------------------- up
def _up_parser(sub: Any, environ: Mapping[str, str]) -> None:
    p = _command(
        sub,
        UP,
        environ,
        help="start a local fleet: a balancer, agents and llama-servers",
        description=(
            "Start a balancer and N llama-servers (the bundled llama.cpp build) each with "
            "an agent, on this machine; print where to send requests; stop everything on "
            "Ctrl-C."
        ),
    )
    p.set_defaults(func=_run_up)


def _run_up(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.up import UpConfig, run

    _distinct_listeners("up", args)
    return run(build(UpConfig, vars(args)))


def _distinct_listeners(command: str, args: argparse.Namespace) -> None:
    """Raises SystemExit when the inference and management listeners would share a
    port (the second bind failed with only "address already in use")."""
    if args.inference_addr.clashes(args.management_addr):
        raise SystemExit(
            f"corral {command}: --inference-addr {args.inference_addr} and --management-addr "
            f"{args.management_addr} share a port; give each its own (the defaults are "
            "8061 and 8060)"
        )


# --------------------------------------------------------------------- top
def _top_parser(sub: Any, environ: Mapping[str, str]) -> None:
    p = _command(
        sub,
        TOP,
        environ,
        help="a live terminal dashboard of a balancer's fleet",
        description=(
            "Show a balancer's agents, slots, buffered requests and rates, live. "
            "Keys: s sorts, Enter shows an agent's detail and issues, q quits. With "
            "--once, or when the output is not a terminal, print the fleet once as "
            "plain text instead."
        ),
    )
    p.set_defaults(func=_run_top)


def _run_top(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.top.app import TopApp

    if args.once or not sys.stdout.isatty():
        return _top_once(args.management_addr.url(), args.management_token or None)
    app = TopApp(args.management_addr.url(), args.management_token or None)
    return app.run_async()


async def _top_once(url: str, token: str | None) -> None:
    import aiohttp

    from corral.top.app import SourceError, describe, read_once

    try:
        text = await read_once(url, token)
    except (SourceError, aiohttp.ClientError, TimeoutError) as exc:
        raise SystemExit(f"corral top: cannot read the fleet at {url}: {describe(exc)}") from None
    sys.stdout.write(text)


# ------------------------------------------------------------------- bench
def _bench_parser(sub: Any, environ: Mapping[str, str]) -> None:
    from corral.bench.command import add_arguments

    p = sub.add_parser(
        "bench",
        help="load-test an OpenAI-compatible or llama.cpp endpoint",
        description=(
            "Send a seeded workload to an endpoint (Corral, a llama-server, any "
            "OpenAI-compatible server) in a closed loop (--users) or an open loop "
            "(--rate, Poisson arrivals), and report time to first token, inter-token "
            "latency, end-to-end latency, throughput, errors by kind and, through Corral, "
            "the time spent in its buffer. Text on the terminal, --json for machines, "
            "--charts for PNG charts (needs the charts extra: pip install 'corral[charts]')."
        ),
    )
    declared: list[Setting] = []

    def flag(parser: Any, flag: str, help: str, **kw: Any) -> None:
        """A bench flag that may come from ``CORRAL_BENCH_<FLAG>``, as a setting."""
        name = flag.lstrip("-").replace("-", "_")
        setting = Setting(
            name,
            help,
            kw.get("type", str),
            default=kw.get("default"),
            choices=tuple(kw.get("choices", ())),
            secret="key" in name,
            env="CORRAL_BENCH_" + name.upper(),
        )
        declared.append(setting)
        add_argument(parser, setting, environ)

    add_arguments(p, flag)
    for setting in COMMON:
        add_argument(p, setting, environ)
    schema = Schema("bench", "CORRAL_BENCH_", (*declared, *COMMON), owns_prefix=True)
    p.set_defaults(func=_run_bench, schema=schema, config_files=False, command_parser=p)


def _run_bench(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from corral.bench.command import run

    return run(args)


# --------------------------------------------------------------------- k8s
def _k8s_parser(sub: Any, environ: Mapping[str, str]) -> None:
    from corral.k8s.command import add_arguments

    p = sub.add_parser(
        "k8s",
        help="Kubernetes: render manifests from an intent; the pods' fetch and drain steps",
        description="Kubernetes. `corral k8s render INTENT.yaml` writes the manifests of a "
        "fleet; `fetch` and `drain` are the steps its pods run (init container, preStop).",
    )
    add_arguments(p.add_subparsers(dest="k8s_command", metavar="STEP", required=True))
    for setting in COMMON:
        add_argument(p, setting, environ)
    p.set_defaults(
        func=_run_k8s,
        schema=Schema("k8s", "CORRAL_", COMMON),
        config_files=False,
        command_parser=p,
    )


async def _run_k8s(args: argparse.Namespace) -> int:
    code: int = args.k8s(args)
    return code


# --------------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    """The top-level parser: after argparse has read the command line, every setting
    of the chosen command is resolved (:func:`resolve`); a bad value in the
    environment or the config file is an argparse error (usage, message, exit 2), and
    so is an unknown argument, both said by the chosen command's parser (its usage,
    ``corral balancer: error: ...``), not the top level's."""

    def __init__(self, *args: Any, environ: Mapping[str, str], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.environ = environ

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        try:
            resolve(parsed, self.environ)
        except ConfigError as exc:
            getattr(parsed, "command_parser", self).error(str(exc))
        return parsed, rest

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, rest = self.parse_known_args(args, namespace)
        if rest:
            getattr(parsed, "command_parser", self).error(
                f"unrecognized arguments: {' '.join(rest)}"
            )
        return parsed


def parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The ``corral`` parser. Its ``parse_args`` resolves every setting of the chosen
    command from the command line, ``environ`` (default: ``os.environ``), the config
    file and the defaults: ``args.<setting>`` is the effective value and
    ``args.resolved`` has the values with their sources."""
    environ = os.environ if environ is None else environ
    top = _Parser(
        prog="corral",
        description="Corral: a slot-aware load balancer and fleet manager for llama.cpp servers.",
        environ=environ,
    )
    top.add_argument("--version", action="version", version=f"corral {__version__}")
    sub = top.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=argparse.ArgumentParser
    )
    builders: list[Callable[[Any, Mapping[str, str]], None]] = [
        _balancer_parser,
        _agent_parser,
        _sim_parser,
        _up_parser,
        _top_parser,
        _bench_parser,
        _k8s_parser,
    ]
    for add in builders:
        add(sub, environ)
    return top


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill in ``args`` (from a parser without setting defaults): each setting of
    ``args.schema`` from the command line, else the environment, else the config file
    (``--config`` or ``CORRAL_CONFIG``), else its default. Sets ``args.resolved``.

    Raises:
        ConfigError: A bad value in the environment or the file, or a bad file.
    """
    schema: Schema = args.schema
    given = {name: getattr(args, name) for name in schema.names if hasattr(args, name)}
    file_values: dict[str, Any] = {}
    file_name = "the config file"
    if args.config_files:
        file = args.config or environ.get("CORRAL_CONFIG")
        if file:
            file_values, file_name = config_files.load(Path(file)), str(file)
    resolved = schema.resolve(given, environ, file_values, file_name)
    for name, value in resolved.values.items():
        setattr(args, name, value)
    args.resolved = resolved


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """``parser(environ).parse_args(argv)``: every setting resolved (see :func:`parser`).

    Raises:
        SystemExit: A bad flag or value (the reason is on stderr), or ``--help``.
    """
    return parser(environ).parse_args(argv)


def _run(coro: Coroutine[Any, Any, int | None]) -> int | None:
    """Run until done or until SIGINT/SIGTERM, which stop it gracefully; its result.

    The first signal cancels the command's task (its ``finally`` stops it in order and
    says what it waits for: :mod:`corral.shutdown`); a second one stops the process at
    once (exit status 128 + the signal's number), as uvicorn's does. A supervised
    llama-server dies with it (``PR_SET_PDEATHSIG``)."""
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        loop = runner.get_loop()
        task = loop.create_task(coro)
        asked = 0

        def stop(sig: signal.Signals) -> None:
            nonlocal asked
            asked += 1
            if asked == 1:
                task.cancel()
                return
            name = "Ctrl-C" if sig is signal.SIGINT else sig.name
            log.warning("Second %s: stopping at once.", name)
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stdout.flush()
            os._exit(128 + sig.value)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # what follows goes to a supervised llama-server
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parse_args(argv)
    args.extra = extra
    if extra and args.command != "agent":
        print("corral: arguments after -- are only for `corral agent`", file=sys.stderr)
        return 2
    if getattr(args, "print_config", False):
        print(config_files.render(args.schema, args.resolved), end="")
        return 0
    handler = logging.StreamHandler()
    if args.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        code = _run(args.func(args))
    except OSError as exc:
        log.error("%s", exc)
        return 1
    return code or 0

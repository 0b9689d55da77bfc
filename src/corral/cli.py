"""The ``corral`` command and its subcommands.

Every flag can also be set from the environment: ``--inference-addr`` reads
``CORRAL_INFERENCE_ADDR``; repeatable flags take a comma-separated list there.
A flag on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from corral import __version__
from corral.addr import Addr, AddressError

log = logging.getLogger("corral")


def _addr(text: str) -> Addr:
    try:
        return Addr.parse(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be negative")
    return value


def _ip_list(text: str) -> tuple[str, ...]:
    """``127.0.0.1,10.0.0.0/8`` or ``*``; empty for none."""
    from corral.balancer.forwarded import ProxyTrust

    entries = tuple(e.strip() for e in text.split(",") if e.strip())
    try:
        ProxyTrust(entries)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return entries


def _env_name(flag: str, prefix: str) -> str:
    return prefix + flag.lstrip("-").upper().replace("-", "_")


def _flag(
    parser: argparse.ArgumentParser, flag: str, help: str, prefix: str = "CORRAL_", **kw: Any
) -> None:
    """Add a flag whose default may come from ``<prefix><FLAG>`` (``CORRAL_<FLAG>``).

    The balancer and the agent share one namespace on purpose (``--agent-token`` is
    the same secret on both sides); ``sim`` and ``up`` have their own.
    """
    env = _env_name(flag, prefix)
    value = os.environ.get(env)
    if value is not None:
        if kw.get("action") == "append":
            convert = kw.get("type", str)
            kw["default"] = [convert(v.strip()) for v in value.split(",") if v.strip()]
        elif kw.get("action") == "store_true":
            kw["default"] = value.lower() in ("1", "true", "yes", "on")
        else:
            kw["default"] = value
    shown = kw.get("default")
    suffix = (
        f" (default: {shown})" if shown not in (None, [], False) and "token" not in flag else ""
    )
    parser.add_argument(flag, help=f"{help}{suffix} [env {env}]", **kw)


def _common(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--log-level",
        "log verbosity",
        default="info",
        choices=["debug", "info", "warning", "error"],
    )
    _flag(
        parser,
        "--log-format",
        "human-readable lines, or one JSON object per line",
        default="text",
        choices=["text", "json"],
    )


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
def _balancer_parser(sub: Any) -> None:
    p = sub.add_parser(
        "balancer",
        help="run a balancer",
        description=(
            "Run a balancer. Applications send llama.cpp / OpenAI requests to the "
            "inference address; agents register on the management address. The "
            "balancer sends each request to a server with a free slot and holds it in a "
            "bounded buffer while none is free."
        ),
    )
    _flag(p, "--inference-addr", "HOST:PORT for applications", type=_addr, default="127.0.0.1:8061")
    _flag(
        p,
        "--management-addr",
        "HOST:PORT for agents and operators",
        type=_addr,
        default="127.0.0.1:8060",
    )
    _flag(
        p,
        "--max-buffered-requests",
        "requests that may wait for a free slot; more get 429",
        type=_non_negative_int,
        default="1000",
    )
    _flag(
        p,
        "--buffered-request-timeout",
        "seconds a request may wait for a slot before it gets 503",
        type=_positive(float),
        default="30",
    )
    _flag(
        p,
        "--heartbeat-timeout",
        "seconds without a word from an agent before it gets no requests",
        type=_positive(float),
        default="5",
    )
    _flag(p, "--agent-token", "secret agents must present to register")
    _flag(p, "--management-token", "secret required by the management API")
    _flag(
        p,
        "--api-key",
        "key clients must present on the inference listener (repeatable)",
        action="append",
        default=[],
    )
    _flag(p, "--api-key-file", "file with one accepted key per line", type=Path)
    _flag(
        p,
        "--state-file",
        "where the desired state is kept across restarts "
        "(default: ~/.local/state/corral/desired-state-<management port>.json)",
        type=Path,
    )
    _flag(
        p,
        "--rollout-share",
        "share of supervised agents that may change settings at once (at least one)",
        type=float,
        default="0",
    )
    _flag(
        p,
        "--drain-timeout",
        "seconds an agent gets to finish its requests before its settings change",
        type=_positive(float),
        default="60",
    )
    _flag(p, "--statsd-addr", "HOST:PORT of a StatsD server (UDP)", type=_addr)
    _flag(p, "--statsd-prefix", "prefix of StatsD metric names", default="corral")
    _flag(
        p,
        "--statsd-interval",
        "seconds between StatsD sends",
        type=_positive(float),
        default="10",
    )
    _flag(
        p,
        "--max-body-size",
        "largest request body in bytes",
        type=_positive(int),
        default=str(64 * 1024 * 1024),
    )
    _flag(
        p,
        "--forwarded-allow-ips",
        "comma-separated peers (IPs, networks, or *) whose X-Forwarded-* and Forwarded "
        "headers are kept and appended to; others' are replaced (as uvicorn's flag)",
        type=_ip_list,
        default="127.0.0.1",
    )
    _common(p)
    p.set_defaults(func=_run_balancer)


def _run_balancer(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.balancer import BalancerConfig, run

    keys = list(args.api_key)
    if args.api_key_file is not None:
        try:
            lines = args.api_key_file.read_text().splitlines()
        except OSError as exc:
            raise SystemExit(f"corral balancer: cannot read --api-key-file: {exc}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    config = BalancerConfig(
        inference_addr=args.inference_addr,
        management_addr=args.management_addr,
        max_buffered_requests=args.max_buffered_requests,
        buffered_request_timeout=args.buffered_request_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
        agent_token=args.agent_token or None,
        management_token=args.management_token or None,
        api_keys=tuple(keys),
        max_body_size=args.max_body_size,
        forwarded_allow_ips=args.forwarded_allow_ips,
        state_file=args.state_file or _default_state_file(args.management_addr.port),
        rollout_share=min(1.0, max(0.0, args.rollout_share)),
        drain_timeout=args.drain_timeout,
        statsd_addr=args.statsd_addr,
        statsd_prefix=args.statsd_prefix,
        statsd_interval=args.statsd_interval,
    )
    return run(config)


def _default_state_file(port: int) -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "corral" / f"desired-state-{port}.json"


# ------------------------------------------------------------------- agent
def _agent_parser(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run an agent beside a llama-server (or running one)",
        usage="corral agent [options] [-- extra llama-server arguments]",
        description=(
            "Watch one llama-server (its /health, /slots and /props) and report it to one "
            "or more balancers, which then send it requests. Attach mode: "
            "--local-llamacpp-addr names a running server. Supervisor mode: --model "
            "makes the agent start llama-server itself, restart it after a crash and stop "
            "it when the agent stops; arguments after -- go to llama-server."
        ),
    )
    _flag(
        p,
        "--local-llamacpp-addr",
        "HOST:PORT where the agent reads its llama-server (attach mode)",
        type=_addr,
    )
    _flag(
        p,
        "--model",
        "model to serve (supervisor mode): a GGUF path, pkg:<python package> carrying one, "
        "or 'bundled' (Gemma 3 270M)",
    )
    _flag(p, "--slots", "slots of the supervised server", type=_positive(int), default="2")
    _flag(
        p,
        "--ctx-size",
        "context size per slot of the supervised server",
        type=_positive(int),
        default="2048",
    )
    _flag(p, "--threads", "CPU threads of the supervised server", type=_positive(int))
    _flag(p, "--llama-server", "llama-server binary (default: the bundled build)", type=Path)
    _flag(
        p,
        "--quiet-server",
        "do not copy the supervised server's log into the agent's",
        action="store_true",
    )
    _flag(
        p,
        "--external-llamacpp-addr",
        "HOST:PORT where balancers reach the server (default: the local address)",
        type=_addr,
    )
    _flag(
        p,
        "--management-addr",
        "HOST:PORT of a balancer's management listener (repeat for several balancers)",
        type=_addr,
        action="append",
        default=[],
    )
    _flag(p, "--name", "name shown on dashboards (default: host name and port)")
    _flag(p, "--llamacpp-api-key", "the llama-server's --api-key, if it has one")
    _flag(p, "--agent-token", "the balancers' --agent-token")
    _flag(
        p,
        "--poll-interval",
        "seconds between reads of the server",
        type=_positive(float),
        default="0.5",
    )
    _common(p)
    p.set_defaults(func=_run_agent)


def _run_agent(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.agent import AgentConfig, run

    if not args.management_addr:
        raise SystemExit("corral agent: give at least one --management-addr (a balancer)")
    if (args.local_llamacpp_addr is None) == (args.model is None):
        raise SystemExit(
            "corral agent: give --local-llamacpp-addr (a running llama-server) "
            "or --model (the agent runs llama-server itself), not both"
        )
    if args.extra and args.model is None:
        raise SystemExit("corral agent: arguments after -- are for a supervised server (--model)")
    import socket

    server = None
    if args.model is not None:
        server = _supervised_server(args)
        name = args.name or f"{socket.gethostname()}:{Path(args.model).stem}"
    else:
        name = args.name or f"{socket.gethostname()}:{args.local_llamacpp_addr.port}"
    config = AgentConfig(
        local_llamacpp_addr=args.local_llamacpp_addr,
        external_llamacpp_addr=args.external_llamacpp_addr,
        management_addrs=tuple(args.management_addr),
        name=name,
        llamacpp_api_key=args.llamacpp_api_key or None,
        agent_token=args.agent_token or None,
        poll_interval=args.poll_interval,
    )
    return run(config, server)


def _supervised_server(args: argparse.Namespace) -> Any:
    from corral.agent.supervisor import ServerSettings, Supervisor
    from corral.llamacpp import LlamaCppNotFound, llama_server_path
    from corral.llamacpp.sources import ModelSourceError, resolve

    try:
        model = resolve(args.model)
        binary = llama_server_path(args.llama_server)
    except (ModelSourceError, LlamaCppNotFound) as exc:
        raise SystemExit(f"corral agent: --model {args.model}: {exc}") from None
    settings = ServerSettings(
        model=model,
        slots=args.slots,
        ctx_size=args.ctx_size,
        threads=args.threads,
        extra_args=tuple(args.extra),
        binary=binary,
        api_key=args.llamacpp_api_key or None,
    )
    return Supervisor(
        settings, name=args.name or model.stem, log_server_output=not args.quiet_server
    )


# --------------------------------------------------------------------- sim
def _sim_parser(sub: Any) -> None:
    sflag = functools.partial(_flag, prefix="CORRAL_SIM_")
    p = sub.add_parser(
        "sim",
        help="run a simulated llama-server (for tests and benchmarks)",
        description=(
            "A simulated llama-server: realistic /health, /slots, /props and streamed "
            "completions whose speed drops as more slots are busy. No model, no GPU."
        ),
    )
    sflag(p, "--addr", "HOST:PORT to listen on", type=_addr, default="127.0.0.1:8090")
    sflag(p, "--slots", "number of slots", type=_positive(int), default="4")
    sflag(p, "--model", "model name to report", default="sim-model")
    sflag(p, "--name", "server name (sent in X-Sim-Server)", default="sim")
    sflag(
        p,
        "--tokens-per-second",
        "generation speed of one slot alone",
        type=_positive(float),
        default="50",
    )
    sflag(p, "--api-key", "require this key, like llama-server's --api-key")
    _common(p)
    p.set_defaults(func=_run_sim)


def _run_sim(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.sim import SimConfig, serve

    config = SimConfig(
        name=args.name,
        model=args.model,
        slots=args.slots,
        tokens_per_second=args.tokens_per_second,
        api_key=args.api_key or None,
    )
    return serve(config, args.addr.host, args.addr.port)


# ---------------------------------------------------------------------- up
def _up_parser(sub: Any) -> None:
    uflag = functools.partial(_flag, prefix="CORRAL_UP_")
    p = sub.add_parser(
        "up",
        help="start a local fleet: a balancer, agents and llama-servers",
        description=(
            "Start a balancer and N llama-servers (the bundled llama.cpp build) each with "
            "an agent, on this machine; print where to send requests; stop everything on "
            "Ctrl-C."
        ),
    )
    uflag(p, "--model", "GGUF file to serve (default: the bundled Gemma 3 270M)", type=Path)
    uflag(p, "--agents", "number of llama-servers and agents", type=_positive(int), default="2")
    uflag(p, "--slots", "slots per server (default: sized for this machine)", type=_positive(int))
    uflag(p, "--ctx-size", "context size per slot", type=_positive(int), default="2048")
    uflag(
        p,
        "--inference-addr",
        "balancer HOST:PORT for applications",
        type=_addr,
        default="127.0.0.1:8061",
    )
    uflag(
        p,
        "--management-addr",
        "balancer HOST:PORT for agents",
        type=_addr,
        default="127.0.0.1:8060",
    )
    uflag(
        p,
        "--ready-timeout",
        "seconds to wait for the fleet to be ready",
        type=_positive(float),
        default="300",
    )
    _common(p)
    p.set_defaults(func=_run_up)


def _run_up(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.up import UpConfig, run

    return run(
        UpConfig(
            model=args.model,
            agents=args.agents,
            slots=args.slots,
            ctx_size=args.ctx_size,
            inference_addr=args.inference_addr,
            management_addr=args.management_addr,
            ready_timeout=args.ready_timeout,
            log_level=args.log_level,
        )
    )


# --------------------------------------------------------------------- top
def _top_parser(sub: Any) -> None:
    p = sub.add_parser(
        "top",
        help="a live terminal dashboard of a balancer's fleet",
        description=(
            "Show a balancer's agents, slots, buffered requests and rates, live. "
            "Keys: s sorts, Enter shows an agent's detail and issues, q quits."
        ),
    )
    _flag(
        p,
        "--management-addr",
        "HOST:PORT of the balancer's management listener",
        type=_addr,
        default="127.0.0.1:8060",
    )
    _flag(p, "--management-token", "the balancer's --management-token, if it has one")
    _common(p)
    p.set_defaults(func=_run_top)


def _run_top(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    from corral.top.app import TopApp

    app = TopApp(args.management_addr.url(), args.management_token or None)
    return app.run_async()


# ------------------------------------------------------------------- bench
def _bench_parser(sub: Any) -> None:
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
            "--charts for PNG charts."
        ),
    )
    add_arguments(p, functools.partial(_flag, prefix="CORRAL_BENCH_"))
    _common(p)
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from corral.bench.command import run

    return run(args)


# --------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="corral",
        description="Corral: a slot-aware load balancer and fleet manager for llama.cpp servers.",
    )
    top.add_argument("--version", action="version", version=f"corral {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _balancer_parser(sub)
    _agent_parser(sub)
    _sim_parser(sub)
    _up_parser(sub)
    _top_parser(sub)
    _bench_parser(sub)
    return top


def _run(coro: Coroutine[Any, Any, int | None]) -> int | None:
    """Run until done or until SIGINT/SIGTERM, which stop it gracefully; its result."""
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        loop = runner.get_loop()
        task = loop.create_task(coro)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
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
    try:
        args = parser().parse_args(argv)
        args.extra = extra
        if extra and args.command != "agent":
            raise argparse.ArgumentTypeError("arguments after -- are only for `corral agent`")
    except argparse.ArgumentTypeError as exc:  # from an env default
        print(f"corral: {exc}", file=sys.stderr)
        return 2
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

"""The balancers Corral is compared with, each started in front of the same servers.

- ``corral``: Corral's balancer with one agent per server, as configured by default;
  ``corral-<mode>`` (``corral-prefix``, ``corral-slots``) passes ``--routing <mode>``
  to the balancer (the option of issue #10's prefix-aware routing);
- ``nginx-rr`` and ``nginx-least-conn``: nginx's round robin and ``least_conn``;
- ``nginx-random``: nginx's ``random`` (a uniformly random server per request);
- ``nginx-sticky``: nginx's ``hash $http_x_session_id consistent``: every request of a
  session (the load generator's ``X-Session-Id``) goes to the same server, whatever
  its load: the oracle of cache affinity, blind to slots;
- ``haproxy``: HAProxy ``balance leastconn`` with ``maxconn`` per server set to its
  slots, so requests beyond them wait in HAProxy's queue instead of in a server's:
  the strongest static configuration a generic balancer offers. Each request opens
  its own server connection (see :func:`haproxy_config` for why).

nginx's open-source build has no queue: ``max_conns`` there turns the overflow into
502 errors, so nginx runs without it, as usually deployed. The config renderers are
pure and tested; :func:`start` runs one contender under a :class:`Processes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from comparison.common import (
    CORRAL,
    Processes,
    SuiteEnv,
    SuiteError,
    agents_ready,
    free_port,
    require,
    start_balancer,
    wait_http,
)

NAMES = ("corral", "haproxy", "nginx-least-conn", "nginx-rr", "nginx-random")
"""The contenders of the routing sections; ``nginx-sticky`` and ``corral-<mode>`` are
known too (the prefix section uses them)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One llama.cpp server (real or simulated) behind the contenders."""

    name: str
    port: int
    slots: int

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


_NGINX_POLICY = {
    "nginx-rr": "",
    "nginx-least-conn": "least_conn;",
    "nginx-random": "random;",
    "nginx-sticky": "hash $http_x_session_id consistent;",
}


def corral_routing(name: str) -> str | None:
    """The ``--routing`` mode a Corral contender name asks for: ``corral-prefix`` ->
    ``prefix``; None for plain ``corral`` (the balancer's default) and other names."""
    if name.startswith("corral-") and len(name) > len("corral-"):
        return name.removeprefix("corral-")
    return None


def nginx_config(policy: str, backends: Sequence[Backend], port: int, work: Path) -> str:
    """An nginx config proxying ``127.0.0.1:port`` to the backends with ``policy``.

    One worker (one core, like Corral's balancer), keep-alive upstream connections,
    and no response buffering, so streams are relayed as they come.
    """
    if policy not in _NGINX_POLICY:
        raise SuiteError(f"unknown nginx policy {policy!r}")
    servers = "\n".join(f"    server {b.addr};" for b in backends)
    temp = " ".join(
        f"{kind}_temp_path {work / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    return f"""worker_processes 1;
pid {work / "nginx.pid"};
error_log {work / "error.log"} warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  {temp} uwsgi_temp_path {work / "uwsgi"}; scgi_temp_path {work / "scgi"};
  upstream fleet {{
    {_NGINX_POLICY[policy]}
{servers}
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://fleet;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      client_body_buffer_size 8m;  # bodies in memory: the workers cannot write the temp dir
      proxy_read_timeout 900s;
      proxy_send_timeout 900s;
    }}
  }}
}}
"""


def haproxy_config(backends: Sequence[Backend], port: int, queue_timeout: float) -> str:
    """An HAProxy config: ``leastconn``, ``maxconn`` = slots per server, and a queue.

    Each request gets a server connection of its own (``option http-server-close``):
    llama-server (cpp-httplib) closes a kept-alive connection after 5 s idle, and a
    request HAProxy sent over an idle connection the server had just closed was lost:
    HAProxy closes the client's connection without an answer, for a browser to retry
    (``http-reuse safe``), and logs nothing; the load generator, like any API client,
    does not resend a POST and counts a ``connection`` error (aiohttp's
    ``ServerDisconnectedError``): 9-34 of 109-178 requests a run in the real-server
    sections. (``retry-on empty-response`` saves them too, but only requests that fit
    HAProxy's 16 kB buffer, and by sending a POST twice.) Requests that end abnormally
    otherwise (a queue timeout, a server error) are logged to stdout, the process
    log: one ``option httplog`` line each, with its termination state.
    """
    servers = "\n".join(f"  server {b.name} {b.addr} maxconn {b.slots}" for b in backends)
    return f"""global
  maxconn 4000
  nbthread 1
  log stdout format raw local0

defaults
  mode http
  log global
  option httplog
  option dontlog-normal
  timeout connect 5s
  timeout client 900s
  timeout server 900s
  timeout queue {int(queue_timeout)}s
  option http-server-close
  option http-no-delay

frontend corral_bench
  bind 127.0.0.1:{port}
  default_backend fleet

backend fleet
  balance leastconn
{servers}
"""


@dataclass(frozen=True, slots=True)
class Running:
    """A started contender: where clients send requests."""

    name: str
    url: str
    management_url: str | None = None
    """Corral only: its management listener."""


async def start(
    name: str,
    backends: Sequence[Backend],
    procs: Processes,
    env: SuiteEnv,
    *,
    core: str = "0",
    queue_timeout: float = 300.0,
    agent_core: str = "1",
) -> Running:
    """Start contender ``name`` in front of ``backends``, pinned to ``core``.

    Corral and HAProxy buffer up to ``queue_timeout`` seconds. Returns when the
    contender answers and (for Corral) every agent is ready.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    routing = corral_routing(name)
    if name == "corral" or routing is not None:
        options = [] if routing is None else ["--routing", routing]
        balancer = await start_balancer(
            env, procs, core, env.work_dir / f"state-{port}.json",
            "--max-buffered-requests", "100000",
            "--buffered-request-timeout", str(queue_timeout),
            *options,
            name=f"{name}-balancer",
            log_level="warning",
        )  # fmt: skip
        for b in backends:
            procs.start(
                f"corral-agent-{b.name}",
                env.pin(agent_core, [
                    *CORRAL, "agent", "--log-level", "warning", "--name", b.name,
                    "--local-llamacpp-addr", b.addr,
                    "--management-addr", f"127.0.0.1:{balancer.management_port}",
                ]),
            )  # fmt: skip
        await agents_ready(balancer.mgmt, len(backends), procs)
        return Running(name, balancer.url, balancer.mgmt)
    if name.startswith("nginx-"):
        work = env.work_dir / f"{name}-{port}"
        work.mkdir(parents=True, exist_ok=True)
        conf = work / "nginx.conf"
        conf.write_text(nginx_config(name, backends, port, work))
        nginx = require("nginx")
        procs.start(
            name, env.pin(core, [nginx, "-p", str(work), "-c", str(conf), "-g", "daemon off;"])
        )
    elif name == "haproxy":
        conf = env.work_dir / f"haproxy-{port}.cfg"
        conf.write_text(haproxy_config(backends, port, queue_timeout))
        procs.start(name, env.pin(core, [require("haproxy"), "-db", "-f", str(conf)]))
    else:
        known = [*NAMES, "nginx-sticky", "corral-<routing>"]
        raise SuiteError(f"unknown contender {name!r}; choose from {', '.join(known)}")
    await wait_http(f"{url}/health", procs=procs)
    return Running(name, url)

"""The settings of every ``corral`` command, declared once each.

The balancer, the agent and ``top`` share the ``CORRAL_`` namespace on purpose
(``--agent-token`` is the same secret on both sides); ``sim``, ``up`` and ``bench``
have their own. ``--log-level`` and ``--log-format`` are ``CORRAL_LOG_LEVEL`` and
``CORRAL_LOG_FORMAT`` for every command.

The typed config objects (``BalancerConfig``, ``AgentConfig``, ``SimConfig``,
``UpConfig``) take their defaults for these settings from here.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from corral.addr import Addr
from corral.config.schema import (
    Schema,
    Setting,
    addr,
    ip_list,
    non_negative_float,
    non_negative_int,
    port,
    positive,
    share,
)


def more_than_a_second(text: str) -> float:
    """Seconds, more than llama-server's 1 s wait for a client that left."""
    value = positive(float)(text)
    if not value > 1.0:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be more than 1 (llama-server checks for clients that left "
            "only after 1 s without a reader's answer)"
        )
    return float(value)


def reserve_share(text: str) -> float:
    """A share of slots, 0 or more and below 1 (1 would starve batch requests)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more and below 1")
    return value


def lora_spec(text: str) -> tuple[str, str]:
    """``NAME=PATH`` (a LoRA adapter and the model name it is served as) -> ``(name, path)``."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    if "," in path or ":" in path:
        raise argparse.ArgumentTypeError(f"a LoRA path cannot hold ',' or ':' (got {path!r})")
    return name, path


def cache_mib(text: str) -> int:
    """MiB of host prompt cache as llama-server's ``--cache-ram`` takes it: a whole
    number, 0 (off) or more, or -1 (no limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"{text!r}: give MiB, 0 (off) or -1 (no limit)")
    return value


COMMON = (
    Setting(
        "log_level",
        "log verbosity",
        default="info",
        choices=("debug", "info", "warning", "error"),
        env="CORRAL_LOG_LEVEL",
    ),
    Setting(
        "log_format",
        "human-readable lines, or one JSON object per line",
        default="text",
        choices=("text", "json"),
        env="CORRAL_LOG_FORMAT",
    ),
)
"""Settings every command has."""

# ---------------------------------------------------- Kubernetes (issue #14)
KUBERNETES_BALANCER = (
    Setting(
        "keda_addr",
        "HOST:PORT for KEDA's external scaler (gRPC: IsActive, StreamIsActive, "
        "GetMetricSpec, GetMetrics per model; needs the k8s extra)",
        addr,
        default_text="off",
    ),
    Setting(
        "scaled_model",
        "a model that may have no server now (scaled to zero): requests naming it wait in "
        "the buffer for one instead of getting 404 (repeatable)",
        repeatable=True,
    ),
)
"""The balancer's settings for running on Kubernetes (``corral k8s render`` sets them)."""

KUBERNETES_AGENT = (
    Setting(
        "llamacpp_host",
        "address the supervised server listens on; 0.0.0.0 when balancers run elsewhere",
        default="127.0.0.1",
    ),
    Setting(
        "model_alias",
        "the model's name as the supervised server reports it (llama-server's --alias)",
        default_text="the file name without .gguf",
    ),
)
"""The agent's settings for running on Kubernetes (``corral k8s render`` sets them)."""


BALANCER = Schema(
    "balancer",
    "CORRAL_",
    (
        Setting(
            "inference_addr",
            "HOST:PORT for applications",
            addr,
            default=Addr("127.0.0.1", 8061),
        ),
        Setting(
            "management_addr",
            "HOST:PORT for agents and operators",
            addr,
            default=Addr("127.0.0.1", 8060),
        ),
        Setting(
            "max_buffered_requests",
            "requests that may wait for a free slot; more get 429",
            non_negative_int,
            default=1000,
        ),
        Setting(
            "buffered_request_timeout",
            "seconds a request may wait for a slot before it gets 503",
            positive(float),
            default=30.0,
        ),
        Setting(
            "max_buffered_bytes",
            "request body bytes that may wait for a free slot at once; more get 429 "
            "(a request into an empty buffer is always taken)",
            positive(int),
            default=256 * 1024 * 1024,
            default_from="four bodies of the largest size, --max-body-size",
        ),
        Setting(
            "queue",
            "who goes first when a slot frees: 'fifo' (arrival order), 'priority' "
            "(classes high > interactive > batch, with aging; batch on idle capacity) "
            "or 'fair' (priority, then weighted fair share between tenants); "
            "docs/tenants.md",
            default="fifo",
            choices=("fifo", "priority", "fair"),
        ),
        Setting(
            "interactive_reserve",
            "with --queue priority or fair: share of each model's slots that batch "
            "requests leave free for the higher classes (rounded down)",
            reserve_share,
            default=0.25,
            only_with=("queue", ("priority", "fair")),
        ),
        Setting(
            "priority_aging",
            "with --queue priority or fair: seconds after which a class whose requests "
            "got no slot is served first (the starvation bound)",
            positive(float),
            default=10.0,
            only_with=("queue", ("priority", "fair")),
        ),
        Setting(
            "batch_request_timeout",
            "seconds a batch-class request may wait for a slot before it gets 503",
            positive(float),
            default=600.0,
        ),
        Setting(
            "heartbeat_timeout",
            "seconds without a word from an agent before it gets no requests",
            positive(float),
            default=5.0,
        ),
        Setting(
            "upstream_connect_timeout",
            "seconds to connect to a server before trying another",
            positive(float),
            default=5.0,
            default_from="HAProxy's usual `timeout connect`",
        ),
        Setting(
            "upstream_head_timeout",
            "seconds from sending a streamed request (or one that takes no slot) to its "
            "response head; the server is then set aside. Non-streamed generations have "
            "none: llama-server answers them only when done, and a hung server is found "
            "by its agent (--read-timeout)",
            positive(float),
            default=60.0,
            default_from="HAProxy's usual `timeout server`",
        ),
        Setting(
            "upstream_idle_timeout",
            "seconds a response may send nothing once its head came (not counted while "
            "the client is slow to read)",
            positive(float),
            default=60.0,
            default_from="HAProxy's usual `timeout server`",
        ),
        Setting(
            "upstream_keepalive_timeout",
            "seconds an idle connection to a server is kept for the next request; keep it "
            "below the server's own keep-alive timeout, or requests are written into "
            "connections the server is closing (then sent again on a new one)",
            positive(float),
            default=4.0,
            default_from="below the 5 s after which llama-server (cpp-httplib's "
            "CPPHTTPLIB_KEEPALIVE_TIMEOUT_SECOND) and uvicorn (vLLM, SGLang: "
            "--timeout-keep-alive) close an idle connection",
        ),
        Setting(
            "request_head_timeout",
            "seconds a client has to send a whole request line and headers (slow clients, "
            "slow-loris); then 408 and the connection closes",
            positive(float),
            default=20.0,
            default_from="HAProxy's `timeout http-request` advice, 10-30 s",
        ),
        Setting(
            "shutdown_timeout",
            "seconds requests in flight get to finish on SIGTERM or Ctrl-C",
            positive(float),
            default=10.0,
        ),
        Setting(
            "tls_cert",
            "PEM certificate (chain) for TLS on both listeners (https, wss); with --tls-key",
            Path,
            default_text="off: plain HTTP",
        ),
        Setting("tls_key", "PEM private key of --tls-cert", Path),
        Setting("agent_token", "secret agents must present to register", secret=True),
        Setting("management_token", "secret required by the management API", secret=True),
        Setting(
            "api_key",
            "key clients must present on the inference listener (repeatable)",
            repeatable=True,
            secret=True,
        ),
        Setting(
            "api_key_file",
            "file with one accepted key per line, or a TOML keys file naming tenants "
            "(key or its sha256, class, max concurrent requests, weight; docs/tenants.md)",
            Path,
        ),
        Setting(
            "state_file",
            "where the desired state is kept across restarts",
            Path,
            default_text="~/.local/state/corral/desired-state-<management port>.json",
        ),
        Setting(
            "data_dir",
            "directory for the Batch API's database and files (/v1/files, /v1/batches; "
            "docs/batch.md); jobs survive a restart with the same directory",
            Path,
            default_text="off: no Batch API",
        ),
        Setting(
            "batch_concurrency",
            "batch lines run at once, at batch priority (X-Corral-Priority: batch)",
            positive(int),
            default=8,
        ),
        Setting(
            "rollout_share",
            "share of supervised agents that may change settings at once, 0 to 1 (at least "
            "one at a time: 0 is one by one)",
            share,
            default=0.0,
        ),
        Setting(
            "drain_timeout",
            "seconds an agent gets to finish its requests before its settings change",
            positive(float),
            default=60.0,
        ),
        Setting(
            "routing",
            "how a server is chosen for a request: 'slots' (most free slots) or 'prefix' "
            "(where the prompt is probably cached, weighed against load; reads the "
            "request's messages or prompt; docs/architecture.md)",
            default="slots",
            choices=("slots", "prefix"),
        ),
        Setting(
            "prefix_max_wait",
            "with --routing prefix: the most seconds a request may wait for the busy "
            "server that holds its prompt (0: never wait). It waits only when that server "
            "is expected to serve it sooner than a free one that would read the whole "
            "prompt, and only as long as that prefill would take (the time the wait can "
            "save), so this is a cap for when the estimates are wrong",
            non_negative_float,
            default=10.0,
            only_with=("routing", ("prefix",)),
        ),
        Setting(
            "prefix_max_pass",
            "with --routing prefix: seconds a waiting request may be passed over, from the "
            "first time, for later requests whose prompt the freed server holds (0: a "
            "request that would take the slot is never passed over). Under load every "
            "request waits, and serving them strictly in order sends most to servers "
            "without their prompt. The bound must outlast a request's trip through the "
            "scheduler's window of waiting requests under load, or the passed-over pile "
            "up and block all passing (benchmarks/prefix_buffer.py compares values)",
            non_negative_float,
            default=10.0,
            only_with=("routing", ("prefix",)),
        ),
        Setting("statsd_addr", "HOST:PORT of a StatsD server (UDP)", addr),
        Setting("statsd_prefix", "prefix of StatsD metric names", default="corral"),
        Setting(
            "statsd_interval",
            "seconds between StatsD sends",
            positive(float),
            default=10.0,
        ),
        Setting(
            "max_body_size",
            "largest request body in bytes",
            positive(int),
            default=64 * 1024 * 1024,
        ),
        Setting(
            "forwarded_allow_ips",
            "comma-separated peers (IPs, networks, or *) whose X-Forwarded-* and Forwarded "
            "headers are kept and appended to; others' are replaced",
            ip_list,
            default=("127.0.0.1",),
            default_from="uvicorn's --forwarded-allow-ips",
        ),
        Setting(
            "cors_origins",
            "comma-separated list of allowed origins for CORS; '*' any, 'localhost' "
            "reflects the Origin header only if it is localhost",
            default="*",
            default_from="llama-server's --cors-origins",
        ),
        Setting(
            "cors_methods",
            "comma-separated list of allowed methods for CORS",
            default="GET, POST, DELETE, OPTIONS",
            default_from="llama-server's --cors-methods",
        ),
        Setting(
            "cors_headers",
            "comma-separated list of allowed headers for CORS",
            default="*",
            default_from="llama-server's --cors-headers",
        ),
        Setting(
            "cors_credentials",
            "whether to allow credentials for CORS; needs a list of origins or 'localhost' "
            "(refused with --cors-origins '*', which llama-server answers by echoing any "
            "Origin with credentials allowed)",
            switch=True,
            negatable=True,
            default_text="disabled; llama-server enables it, which lets any page use a "
            "visitor's credentials",
        ),
        *KUBERNETES_BALANCER,
        *COMMON,
    ),
)

AGENT = Schema(
    "agent",
    "CORRAL_",
    (
        Setting(
            "local_llamacpp_addr",
            "HOST:PORT where the agent reads its llama-server (attach mode)",
            addr,
        ),
        Setting(
            "server_addr",
            "HOST:PORT where the agent reads its server, whatever the runner (the same as "
            "--local-llamacpp-addr); with a command after --, where that command makes "
            "the server listen",
            addr,
        ),
        Setting(
            "model",
            "model to serve (supervisor mode): a GGUF path, pkg:<python package> carrying "
            "one, or 'bundled' (Gemma 3 270M)",
        ),
        Setting("slots", "slots of the supervised server", positive(int), default=2),
        Setting(
            "ctx_size",
            "context size per slot of the supervised server",
            positive(int),
            default=2048,
        ),
        Setting(
            "lora",
            "LoRA adapter for the supervised server, NAME=PATH (repeatable): loaded at "
            "scale 0, served as model NAME (docs/lora.md)",
            lora_spec,
            repeatable=True,
        ),
        Setting(
            "cache_ram",
            "host memory for the supervised server's prompt cache, MiB (llama-server "
            "--cache-ram; -1 no limit, 0 off); told to balancers for prefix routing",
            cache_mib,
            default_text="an eighth of the machine's memory, 256 to 8192",
            default_from="llama-server's default is 8192",
        ),
        Setting(
            "threads",
            "CPU threads of the supervised server",
            positive(int),
            default_text="llama-server's own",
            default_from="llama.cpp uses all CPU cores",
        ),
        Setting(
            "llama_server",
            "llama-server binary",
            Path,
            default_text="the bundled build",
        ),
        Setting(
            "llamacpp_port",
            "port of the supervised server",
            port,
            default_text="a free port, kept across restarts",
        ),
        Setting(
            "quiet_server",
            "do not copy the supervised server's log into the agent's",
            switch=True,
        ),
        Setting(
            "external_llamacpp_addr",
            "HOST:PORT where balancers reach the server",
            addr,
            default_text="the local address",
        ),
        Setting(
            "management_addr",
            "HOST:PORT of a balancer's management listener (repeat for several balancers)",
            addr,
            repeatable=True,
        ),
        Setting("name", "name shown on dashboards", default_text="host name and port"),
        Setting("llamacpp_api_key", "the llama-server's --api-key, if it has one", secret=True),
        Setting("agent_token", "the balancers' --agent-token", secret=True),
        Setting(
            "poll_interval",
            "seconds between reads of the server's /health",
            positive(float),
            default=0.5,
        ),
        Setting(
            "read_timeout",
            "seconds a read of the server may take; a server that does not answer in "
            "time (hung, stopped) is reported unreachable at once and gets no requests",
            positive(float),
            default=3.0,
        ),
        Setting(
            "slots_gap",
            "seconds from one /slots answer to the next /slots read; over 1 s, or the "
            "server never notices clients that gave up (docs/llamacpp.md)",
            more_than_a_second,
            default=1.25,
        ),
        Setting(
            "idle_slots_interval",
            "seconds between /slots reads while every slot is idle; 0: none, so a server "
            "with --sleep-idle-seconds can fall asleep (the default in supervisor mode "
            "when its arguments ask for sleep)",
            non_negative_float,
            default=30.0,
        ),
        Setting(
            "reconnect_min",
            "seconds before the first reconnect to a balancer that closed or refused the "
            "link; each failed attempt doubles the wait (with jitter) up to --reconnect-max",
            positive(float),
            default=0.2,
            default_from="gRPC's connection backoff starts at 1 s, Envoy's xDS at 0.5 s; "
            "Corral starts sooner so a restarted balancer gets its fleet back within seconds",
        ),
        Setting(
            "reconnect_max",
            "the longest wait, in seconds, between reconnects to a balancer (the backoff's "
            "cap; at least --reconnect-min)",
            positive(float),
            default=10.0,
            default_from="gRPC caps its connection backoff at 120 s, Envoy's BackoffStrategy "
            "at 10 times its base by default; 10 s bounds how long a balancer that is back "
            "waits for an agent",
        ),
        Setting(
            "runner",
            "kind of server the agent reads: llamacpp, vllm, sglang, ollama or openai "
            "(any OpenAI-compatible server); docs/runners.md",
            default="llamacpp",
            choices=("llamacpp", "vllm", "sglang", "ollama", "openai"),
        ),
        Setting(
            "concurrency",
            "requests the server runs at once, for runners without slots: vLLM's "
            "--max-num-seqs, SGLang's --max-running-requests, OLLAMA_NUM_PARALLEL",
            positive(int),
            default_text="the runner's own default (vLLM 256, Ollama 1, openai 1...)",
        ),
        Setting(
            "probe_addr",
            "HOST:PORT for Kubernetes probes: GET /livez (the agent runs) and GET /readyz "
            "(its server is ready and registered with a balancer)",
            addr,
            default_text="off",
        ),
        Setting(
            "tls",
            "connect to balancers over wss:// (TLS), verifying their certificates against "
            "the system's CAs or --tls-ca",
            switch=True,
        ),
        Setting(
            "tls_ca",
            "PEM file of the CA(s) that signed the balancers' certificates (implies --tls)",
            Path,
            default_text="the system's CAs",
        ),
        *KUBERNETES_AGENT,
        *COMMON,
    ),
)

SIM = Schema(
    "sim",
    "CORRAL_SIM_",
    (
        Setting("addr", "HOST:PORT to listen on", addr, default=Addr("127.0.0.1", 8090)),
        Setting(
            "slots",
            "number of slots",
            positive(int),
            default=4,
            default_from="llama-server's --parallel default with a unified KV cache",
        ),
        Setting("model", "model name to report", default="sim-model"),
        Setting("name", "server name (sent in X-Sim-Server)", default="sim"),
        Setting(
            "tokens_per_second",
            "generation speed of one slot alone",
            positive(float),
            default=50.0,
        ),
        Setting("api_key", "require this key, like llama-server's --api-key", secret=True),
        Setting(
            "prompt_tokens_per_second",
            "prompt reading speed of one slot (tokens it has not cached)",
            positive(float),
            default=2000.0,
        ),
        Setting(
            "host_cache_tokens",
            "size of the host prompt cache in tokens (0: none), where a slot's old prompt "
            "goes when another replaces it, and whence it is restored (llama-server's "
            "--cache-ram, which counts MiB)",
            non_negative_int,
            default=0,
        ),
        *COMMON,
    ),
    owns_prefix=True,
)

UP = Schema(
    "up",
    "CORRAL_UP_",
    (
        Setting(
            "model",
            "GGUF file to serve",
            Path,
            default_text="the bundled Gemma 3 270M base, chatting as questions and answers",
        ),
        Setting("agents", "number of llama-servers and agents", positive(int), default=2),
        Setting(
            "slots",
            "slots per server",
            positive(int),
            default_text="sized for this machine",
        ),
        Setting("ctx_size", "context size per slot", positive(int), default=2048),
        Setting(
            "inference_addr",
            "balancer HOST:PORT for applications",
            addr,
            default=Addr("127.0.0.1", 8061),
        ),
        Setting(
            "management_addr",
            "balancer HOST:PORT for agents",
            addr,
            default=Addr("127.0.0.1", 8060),
        ),
        dataclasses.replace(BALANCER["routing"], env=""),  # passed to its balancer
        Setting(
            "ready_timeout",
            "seconds to wait for the fleet to be ready",
            positive(float),
            default=300.0,
        ),
        *COMMON,
    ),
    owns_prefix=True,
)

TOP = Schema(
    "top",
    "CORRAL_",
    (
        Setting(
            "management_addr",
            "HOST:PORT of the balancer's management listener",
            addr,
            default=Addr("127.0.0.1", 8060),
        ),
        Setting(
            "management_token",
            "the balancer's --management-token, if it has one",
            secret=True,
        ),
        Setting(
            "once",
            "print the fleet once as plain text and exit (for scripts and logs; what "
            "corral top does when its output is not a terminal)",
            switch=True,
        ),
        *COMMON,
    ),
)

SCHEMAS = {schema.command: schema for schema in (BALANCER, AGENT, SIM, UP, TOP)}
"""The declared commands by name (``bench`` declares its own flags in
:mod:`corral.bench.command`; the CLI collects them into a schema as it builds)."""

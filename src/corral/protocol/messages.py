"""The agent protocol: typed, versioned messages over one WebSocket.

An agent opens ``GET /api/v1/agent-socket`` on the balancer's management listener
(with ``Authorization: Bearer <agent token>`` when the balancer requires one) and
exchanges JSON text frames, one message per frame, each an object whose ``type``
field names it. See ``docs/protocol.md`` for the conversation.

Every frame goes through :func:`decode_agent_message` or :func:`decode_balancer_message`,
which return a message or raise :class:`ProtocolError` with a clear reason; nothing
else in Corral parses protocol JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from corral.core.fleet import Condition as Condition  # the protocol speaks its values
from corral.core.fleet import ModelState as ModelState

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change. A balancer refuses agents of other versions."""

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Address = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class ProtocolError(Exception):
    """A frame that is not a valid message of this protocol."""


class IssueInfo(msgspec.Struct, frozen=True):
    """A problem with the server, for operators: a stable code and a sentence."""

    code: Annotated[str, msgspec.Meta(max_length=64)]
    message: Annotated[str, msgspec.Meta(max_length=4096)]


class SupervisorInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """Present when the agent runs its llama-server itself (supervisor mode)."""

    state: Literal["stopped", "starting", "ready", "backoff", "stopping"]
    restarts: Count = 0
    load_time_s: float | None = None  # how long the last start took to become ready
    pid: int | None = None
    last_crash: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    """How the server last died unasked, in words (exit status, last log lines)."""
    step: Literal["copying", "loading"] | None = None
    """What a start is doing now (state ``starting``): ``copying`` the model into the
    agent's cache, or ``loading`` it into memory (llama-server runs, ``/health`` is not
    200 yet); None once ready."""
    copied_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """While copying: bytes of the model copied so far."""
    copy_bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """While copying: the model's size in bytes (None: not known in advance)."""
    copy_time_s: float | None = None
    """How long the model's copy into the cache took, seconds (0: it was cached
    already; None: the model is not copied, a local file is served where it is)."""


class LoraAdapterInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """A LoRA adapter the server has loaded (llama-server's ``GET /lora-adapters``)."""

    name: Name
    """What clients ask for as ``model``: the file's stem, or the name given in
    supervisor mode (``--lora NAME=PATH``)."""
    id: Count
    """The server's id for it (a request's ``lora`` entries name it)."""
    path: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    scale: float = 0.0
    """The scale the server applies when a request does not say."""


class DesiredState(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """What supervised servers should run (``PUT /api/v1/desired-state``)."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    """A GGUF path on the agents' machines, or ``bundled`` (the bundled model)."""
    slots: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    ctx_size: Annotated[int, msgspec.Meta(ge=64, le=10_000_000)] | None = None
    """Context per slot."""
    extra_args: list[Annotated[str, msgspec.Meta(max_length=4096)]] = []
    """More llama-server arguments."""
    lora: dict[Name, Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]] = {}
    """LoRA adapters to load, name -> GGUF path on the agents' machines (loaded at
    scale 0: a request applies one by naming it as its model)."""


class Applied(msgspec.Struct, frozen=True):
    """The desired state an agent runs, and which version of it."""

    generation: int
    state: DesiredState


class ModelInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """One model a server that loads models on demand can serve (llama.cpp's router
    mode), and its state there."""

    id: Annotated[str, msgspec.Meta(max_length=1024)]
    state: ModelState


class ServerStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    """What an agent read from its llama-server."""

    condition: Condition
    model: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    slots_total: Count = 0
    slots_processing: Count = 0
    issues: list[IssueInfo] = []
    props: dict[str, Any] = {}
    """The server's ``/props``, every field as it answered (long texts trimmed)."""
    model_list: dict[str, Any] = {}
    """The server's ``/v1/models``, as it answered (read when the server becomes ready
    or changes model). Empty: not read (older agents send none)."""
    supervisor: SupervisorInfo | None = None
    applied: Applied | None = None  # the desired state now running (supervisor mode)
    failed_generation: int | None = None  # the last desired state that failed to apply
    applying: bool = False  # draining or restarting to apply a desired state
    cache_ram_mib: int | None = None
    """The server's host prompt cache (llama-server ``--cache-ram``) in MiB: -1 no
    limit, 0 off, None unknown (attach mode, or agents before it was sent). Optional:
    older balancers ignore it. Prefix routing counts it in what a server can hold."""
    runner: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """Which kind of server the agent reads (``llamacpp``, ``vllm``...; shown to
    operators). None: not said (agents before runners: llama-server)."""
    apis: list[Annotated[str, msgspec.Meta(max_length=64)]] = []
    """The API families the server answers (``openai``, ``llamacpp``, ``ollama``); the
    balancer sends it only routes of these (:mod:`corral.core.endpoints`). Empty: not
    said (agents before runners read llama-server, which answers ``openai`` and
    ``llamacpp``)."""
    models: Annotated[list[ModelInfo], msgspec.Meta(max_length=4096)] = []
    """Every model the server can serve and its state (llama.cpp's router mode: one
    server that loads and unloads models on demand). Empty: it serves ``model`` only.
    Optional: older balancers ignore it and route to ``model``."""
    models_max: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """How many models the server keeps loaded at once (``--models-max``; 0 or None:
    no limit said)."""
    adapters: list[LoraAdapterInfo] = []
    """The LoRA adapters the server has loaded (read when it becomes ready or changes
    model, not at the rate of ``/slots``). Optional: older balancers ignore it; older
    agents send none."""


# --------------------------------------------------------------- agent -> balancer
class Register(msgspec.Struct, frozen=True, tag="register", omit_defaults=True):
    """First message on a socket. The balancer answers :class:`Registered`."""

    version: int
    name: Name
    address: Address  # where the balancer sends requests (the external address)
    status: ServerStatus
    api_key: str | None = None  # the server's own key; the balancer sends it upstream
    share: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Slots of the server this balancer may use at once: an agent that reports to
    several balancers splits its slots between them (see docs/ha.md), so that together
    they never send the server more requests than it has slots. None: all of them
    (one balancer, or an agent before 0.3)."""


class Status(msgspec.Struct, frozen=True, tag="status", omit_defaults=True):
    """The server changed, or the balancer asked (:class:`Refresh`)."""

    status: ServerStatus
    read_age: Annotated[float, msgspec.Meta(ge=0, le=3600)] | None = None
    """Seconds from when the agent started reading the server for this status to when
    it sent it. The balancer uses it to tell its own requests that finished meanwhile
    from load that came from elsewhere. None: unknown (agents before 0.2 send none)."""
    read_end_age: Annotated[float, msgspec.Meta(ge=0, le=3600)] | None = None
    """Seconds from when that read's answer came to when the agent sent this (at most
    ``read_age``; the balancer takes the larger as ``read_age``). The server counted its
    busy slots between the two: the balancer counts the most of its own requests in
    flight over that span (:mod:`corral.core.fleet`). None: unsaid (agents before it;
    the balancer takes the span to end when the status arrives). Optional: older
    balancers ignore it."""
    share: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Slots of the server this balancer may use at once: an agent that reports to
    several balancers splits its slots between them (see docs/ha.md), so that together
    they never send the server more requests than it has slots. None: all of them
    (one balancer, or an agent before 0.3)."""


class Heartbeat(msgspec.Struct, frozen=True, tag="heartbeat"):
    """Sent every heartbeat interval, so the balancer knows the agent is alive."""


class Deregister(msgspec.Struct, frozen=True, tag="deregister", omit_defaults=True):
    """The agent is leaving on purpose; the balancer removes it at once."""

    reason: str = ""


# --------------------------------------------------------------- balancer -> agent
class Registered(msgspec.Struct, frozen=True, tag="registered"):
    agent_id: str
    heartbeat_interval: float


class Refresh(msgspec.Struct, frozen=True, tag="refresh"):
    """Read the server again and send a :class:`Status` now (after a failed request)."""


class Apply(msgspec.Struct, frozen=True, tag="apply"):
    """Drain, then restart the server with this desired state (supervisor mode)."""

    generation: int
    state: DesiredState
    drain_timeout: float = 60.0


class Error(msgspec.Struct, frozen=True, tag="error"):
    """The balancer could not accept a frame; ``fatal`` ones close the socket."""

    message: str
    fatal: bool = False


AgentMessage = Register | Status | Heartbeat | Deregister
BalancerMessage = Registered | Refresh | Apply | Error

_agent_decoder = msgspec.json.Decoder(AgentMessage)
_balancer_decoder = msgspec.json.Decoder(BalancerMessage)
_encoder = msgspec.json.Encoder()


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes | str, side: str) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"invalid {side} message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec's, for a tag or enum value not in UTF-8
        raise ProtocolError(
            f"malformed JSON: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None


def decode_agent_message(data: bytes | str) -> AgentMessage:
    """Decode a frame sent by an agent. Raises :class:`ProtocolError`."""
    message: AgentMessage = _decode(_agent_decoder, data, "agent")
    if isinstance(message, Register) and message.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {message.version}; "
            f"this balancer speaks version {PROTOCOL_VERSION}"
        )
    return message


def decode_balancer_message(data: bytes | str) -> BalancerMessage:
    """Decode a frame sent by a balancer. Raises :class:`ProtocolError`."""
    message: BalancerMessage = _decode(_balancer_decoder, data, "balancer")
    return message


def encode(message: AgentMessage | BalancerMessage) -> bytes:
    return _encoder.encode(message)


_desired_decoder = msgspec.json.Decoder(DesiredState)


def decode_desired_state(data: bytes | str) -> DesiredState:
    """Decode a desired state sent by an operator. Raises :class:`ProtocolError`."""
    result: DesiredState = _decode(_desired_decoder, data, "desired state")
    return result

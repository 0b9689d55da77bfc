"""A simulated llama.cpp ``llama-server`` for fast tests and benchmarks.

It answers llama-server's endpoints in llama-server's JSON (checked against a real
build): ``/health``, ``/props``, ``/slots``, ``/models``, the native ``/completion``,
the OpenAI ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/embeddings``, and
``/tokenize`` / ``/detokenize``. Everything it decides comes from
:mod:`corral.sim.model`; this module only parses requests, awaits what the model
says (a free slot, the time a step takes) and writes the answers, which
:mod:`corral.sim._formats` shapes.

A generation request takes a slot for its whole run and waits in FIFO order when all
slots are busy, as in llama-server. Streams are server-sent events: ``data: {...}``
frames; the OpenAI endpoints end with ``data: [DONE]``, the native one with a frame
whose ``stop`` is true. If the client goes away, the request's slot (or its place in
the queue) is freed at once.

Start one in-process with :func:`start` (tests) or :func:`serve` (until cancelled);
``corral sim`` runs :func:`serve` with the settings of :data:`corral.config.SIM`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import string
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import msgspec
from aiohttp import web

from corral.config import SIM, default
from corral.sim._formats import (
    DEFAULT_PARAMS,
    SSE_DONE,
    SSE_HEADERS,
    ChatFormat,
    Format,
    NativeFormat,
    TextFormat,
    embeddings_body,
    error_body,
    json_response,
    models_body,
    props_body,
    slot_json,
    sse,
)
from corral.sim.model import (
    ContextExceeded,
    Job,
    Plan,
    SlotTable,
    SpeedModel,
    Ticket,
    Timings,
    Vocab,
    count_tokens,
    embed,
    plan_generation,
    render_chat,
    split_pieces,
    token_id,
)

BOS = 2
"""The id the simulated tokenizer gives the beginning-of-sequence token (gemma's)."""

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_T = TypeVar("_T")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How one simulated llama-server behaves."""

    name: str = default(SIM, "name")
    """Sent as the ``X-Sim-Server`` header on every response, so tests see who answered."""
    model: str = default(SIM, "model")
    """Model id in ``/v1/models`` and in responses; ``/props`` says ``/models/<model>.gguf``."""
    slots: int = default(SIM, "slots")
    """Parallel slots (llama-server's ``--parallel``; its default is 4 with a unified KV)."""
    n_ctx: int = 4096
    """Context size of each slot, in tokens (``/props`` ``default_generation_settings.n_ctx``)."""
    tokens_per_second: float = default(SIM, "tokens_per_second")
    """Decode speed of one slot when it is alone; 1e6 makes requests finish at once."""
    slowdown: float = 0.1
    """Contention: a slot's speed is ``tokens_per_second / (1 + slowdown * (busy - 1))``."""
    prompt_tokens_per_second: float = default(SIM, "prompt_tokens_per_second")
    """Prompt reading speed of one slot (tokens not in its prompt cache)."""
    slot_prompt_similarity: float = 0.1
    """llama-server's ``--slot-prompt-similarity`` (its default): a request goes to the
    idle slot whose cached prompt shares more than this share of it, else to the least
    recently used idle slot."""
    host_cache_tokens: int = default(SIM, "host_cache_tokens")
    """Size of the host prompt cache (llama-server's ``--cache-ram``), in tokens; 0: none."""
    n_predict: int = 16
    """Tokens to generate when a request sets no limit (llama-server's own default is -1,
    until end of sequence; a finite default keeps simulated answers short)."""
    eos_after: int | None = None
    """The simulated model ends every answer after this many tokens (finish reason
    ``stop``) unless the request sets ``ignore_eos``; None: answers end at the limit."""
    api_key: str | None = None
    """When set, requests need ``Authorization: Bearer <key>`` (or ``X-Api-Key``) except
    on :attr:`public_paths`, else 401 as in llama-server's ``--api-key``."""
    public_paths: tuple[str, ...] = ("/health", "/v1/health", "/models", "/v1/models")
    """Paths that need no API key. These are llama-server's public endpoints up to mid
    2025; newer builds (including the pinned one) exempt only ``/health`` and
    ``/v1/health``."""
    slots_endpoint: bool = True
    """Whether ``/slots`` answers (llama-server's ``--slots``/``--no-slots``); else 501."""
    embeddings: bool = True
    """Whether ``/v1/embeddings`` answers (llama-server's ``--embeddings``); else 501."""
    loading_seconds: float = 0.0
    """For this long after start the server is "loading the model": 503 everywhere but
    ``/models`` and ``/v1/models``, as llama-server does."""
    seed: int = 0
    """Seeds the response ids and the fake embeddings, so runs repeat exactly."""
    lora: tuple[str, ...] = ()
    """LoRA adapter files the server "loaded" (llama-server's ``--lora``), listed by
    ``GET /lora-adapters`` with ids in this order and scale 0. A request's ``lora``
    field must name only these ids (else 400, as llama-server); the adapters it applies
    (scale not 0) are echoed in the ``X-Sim-Lora`` header (file paths, comma-separated)
    so tests see what the server was asked to apply."""
    crash_marker: str | None = None
    """A request whose body contains this text "crashes" the server (a query of death):
    its connection is reset, and so is every connection after it, as if the process
    had died. For tests of the balancer's retry rule."""

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if self.n_ctx < 2:
            raise ValueError(f"n_ctx must be >= 2, got {self.n_ctx}")
        if not 0.0 <= self.slot_prompt_similarity <= 1.0:
            raise ValueError(
                f"slot_prompt_similarity must be within 0..1, got {self.slot_prompt_similarity}"
            )
        if self.host_cache_tokens < 0:
            raise ValueError(f"host_cache_tokens must be >= 0, got {self.host_cache_tokens}")
        if self.loading_seconds < 0:
            raise ValueError(f"loading_seconds must be >= 0, got {self.loading_seconds}")
        _ = self.speed  # validates the speeds

    @property
    def speed(self) -> SpeedModel:
        return SpeedModel(
            tokens_per_second=self.tokens_per_second,
            slowdown=self.slowdown,
            prompt_tokens_per_second=self.prompt_tokens_per_second,
        )


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An answer in llama-server's error format: ``{"error": {code, message, type}}``."""

    def __init__(self, code: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind

    def response(self) -> web.Response:
        return json_response(error_body(self.code, self.message, self.kind), status=self.code)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error")


class _ClientGone(Exception):
    """The client closed its connection while its request was running."""


# --------------------------------------------------------------------------- engine


class SimEngine:
    """The server's mutable state: its slots, the requests waiting for one, and whether
    it is still "loading". Queueing follows :class:`SlotTable`; this class only parks
    waiting requests on futures and wakes the one the table picks.
    """

    def __init__(self, config: SimConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.speed = config.speed
        self.table = SlotTable(
            config.slots,
            similarity=config.slot_prompt_similarity,
            host_cache_tokens=config.host_cache_tokens,
        )
        self.vocab = Vocab()
        self._clock = clock
        self._ready_at: float | None = None
        self._waiters: dict[int, asyncio.Future[Ticket]] = {}
        self._rng = random.Random(config.seed)
        self.crashed = False
        """Whether a request carrying ``crash_marker`` killed the server (see
        :attr:`SimConfig.crash_marker`): every connection is reset from then on."""
        self.hung = asyncio.Event()
        """Set to make the server stop answering, as a ``kill -STOP`` would: requests
        are accepted and read, and nothing is ever written back until it is cleared
        (:meth:`resume`)."""
        self._resumed = asyncio.Event()  # set while not hung: held requests go on

    def hang(self) -> None:
        """Stop answering (``kill -STOP``): see :attr:`hung`."""
        self._resumed.clear()
        self.hung.set()

    def resume(self) -> None:
        """Answer again (``kill -CONT``): held requests go on."""
        self.hung.clear()
        self._resumed.set()

    async def running(self) -> None:
        """Return at once, or when a hung server resumes."""
        if self.hung.is_set():
            await self._resumed.wait()

    async def gate(self, request: web.Request) -> None:
        """A hung server holds ``request`` here; a crashed one resets its connection.
        Raises ``ConnectionResetError`` on a crash (the connection is gone)."""
        await self.running()
        marker = self.config.crash_marker
        if not self.crashed and marker and request.method == "POST":
            self.crashed = marker.encode() in await request.read()
        if self.crashed:
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("the simulated server crashed")

    def start(self) -> None:
        """Start the loading timer (the app calls this on startup)."""
        self._ready_at = self._clock() + self.config.loading_seconds

    @property
    def loading(self) -> bool:
        return self._ready_at is not None and self._clock() < self._ready_at

    def authorized(self, request: web.Request) -> bool:
        key = self.config.api_key
        if not key or request.path in self.config.public_paths:
            return True
        return (
            request.headers.get("Authorization") == f"Bearer {key}"
            or request.headers.get("X-Api-Key") == key
        )

    def new_id(self) -> str:
        """An OpenAI completion id, as llama-server makes them (seeded here)."""
        alphabet = string.ascii_letters + string.digits
        return "chatcmpl-" + "".join(self._rng.choices(alphabet, k=32))

    @contextlib.asynccontextmanager
    async def occupy(self, job: Job) -> AsyncIterator[Ticket]:
        """Hold a slot for ``job``: wait for one in FIFO order, free it on exit.

        If the waiting or the work is cancelled (the client went away), the place in
        the queue or the slot is given up at once.
        """
        ticket = await self._admit(job)
        assert ticket.slot is not None
        try:
            yield ticket
        finally:
            self._release(ticket.slot)

    async def _admit(self, job: Job) -> Ticket:
        ticket = self.table.submit(job)
        if ticket.slot is not None:
            return ticket
        waiter: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        self._waiters[ticket.task] = waiter
        try:
            return await waiter
        except asyncio.CancelledError:
            if self._waiters.pop(ticket.task, None) is not None:
                self.table.cancel(ticket.task)  # still waiting: leave the queue
            elif waiter.done() and not waiter.cancelled():
                slot = waiter.result().slot  # given a slot as it was cancelled
                assert slot is not None
                self._release(slot)
            raise

    def _release(self, slot: int) -> None:
        granted = self.table.release(slot)
        while granted is not None:
            assert granted.slot is not None
            waiter = self._waiters.pop(granted.task)
            if not waiter.cancelled():
                waiter.set_result(granted)
                return
            granted = self.table.release(granted.slot)  # its client left; next one

    def __repr__(self) -> str:
        state = "LOADING" if self.loading else "READY"
        return (
            f"<SimEngine {self.config.name} {state} slots {self.table.busy}/"
            f"{self.table.n_slots} busy, {self.table.queued} queued model={self.config.model}>"
        )


SIM_ENGINE = web.AppKey("corral_sim_engine", SimEngine)
"""Where :func:`make_app` keeps its :class:`SimEngine` (``app[SIM_ENGINE]``)."""
SIM_LORA = web.RequestKey("sim_lora", str)
"""The adapters a request applies (for the ``X-Sim-Lora`` header)."""


# Steps are scheduled on a fixed timeline, so sleep granularity (about 1 ms) does not
# slow fast servers down; a stall longer than this is not made up in a burst.
_MAX_LAG = 0.05


class _Run:
    """One admitted request on its slot, paced by the speed model."""

    def __init__(
        self,
        engine: SimEngine,
        request: web.Request,
        slot: int,
        plan: Plan,
        n_prompt: int,
        n_cached: int = 0,
    ) -> None:
        self.engine = engine
        self.request = request
        self.slot = slot
        self.plan = plan
        self.n_prompt = n_prompt
        self.n_cached = n_cached
        self.n_decoded = 0
        self._loop = asyncio.get_running_loop()
        self._started = self._due = self._prompt_done = self._loop.time()
        self._ended: float | None = None

    @property
    def finished(self) -> bool:
        return self.n_decoded >= self.plan.n_decoded

    async def read_prompt(self) -> None:
        self._due += self.engine.speed.prompt_delay(self.n_prompt - self.n_cached)
        await self._until_due()
        self._prompt_done = self._loop.time()

    async def step(self) -> str:
        """Decode the next token, taking as long as the speed model says right now."""
        self._due += self.engine.speed.step_delay(max(1, self.engine.table.busy))
        await self._until_due()
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise _ClientGone
        self.engine.table.decode(self.slot)
        piece = self.plan.pieces[self.n_decoded]
        self.n_decoded += 1
        if self.finished:
            self._ended = self._loop.time()
        return piece

    async def _until_due(self) -> None:
        await self.engine.running()  # a hung server's generation stands still too
        now = self._loop.time()
        self._due = max(self._due, now - _MAX_LAG)
        await asyncio.sleep(max(0.0, self._due - now))

    def timings(self) -> Timings:
        now = self._ended if self._ended is not None else self._loop.time()
        return Timings(
            cache_n=self.n_cached,
            prompt_n=self.n_prompt - self.n_cached,
            prompt_ms=1e3 * (self._prompt_done - self._started),
            predicted_n=self.n_decoded,
            predicted_ms=1e3 * (now - self._prompt_done),
        )


# --------------------------------------------------------------------------- requests


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _GenerateBody(msgspec.Struct):
    """The fields of a generation request the simulator uses; others are ignored."""

    prompt: str | list[Any] | None = None
    messages: list[dict[str, Any]] | None = None
    n_predict: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    temperature: float | None = None
    seed: int | None = None
    lora: list[dict[str, Any]] | None = None
    cache_prompt: Any = True  # of another type: the default, as llama-server reads it


class _EmbeddingBody(msgspec.Struct):
    input: str | list[Any] | None = None
    content: str | list[Any] | None = None


class _TokenizeBody(msgspec.Struct):
    content: str = ""
    with_pieces: bool = False


class _DetokenizeBody(msgspec.Struct):
    tokens: list[int] = msgspec.field(default_factory=list)


async def _read(request: web.Request, kind: type[_T]) -> _T:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, exc.text or "request too large", "invalid_request_error") from exc
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec: a string not UTF-8
        raise _bad_request(f"invalid JSON: {exc}") from exc


Kind = Literal["native", "text", "chat"]


@dataclass(frozen=True, slots=True)
class _Ask:
    """One generation request, parsed and checked."""

    prompt: str
    n_prompt: int
    tokens: tuple[int, ...]
    """The prompt's token ids (with BOS where the server adds one), for the cache."""
    n_predict: int
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    ignore_eos: bool
    cache_prompt: bool = True
    params: dict[str, Any] = field(default_factory=dict)


def _parse_ask(kind: Kind, body: _GenerateBody, vocab: Vocab, config: SimConfig) -> _Ask:
    """Check a generation request; its token budget falls back to the server default."""
    if kind == "chat":
        if not body.messages:
            raise _bad_request("'messages' is required")
        prompt = render_chat(body.messages)
        tokens = (BOS, *map(token_id, split_pieces(prompt)))
    else:
        prompt, tokens = _prompt(body.prompt, vocab)
    # llama-server reads n_predict, then OpenAI's names for it, on every endpoint.
    given = (body.n_predict, body.max_completion_tokens, body.max_tokens, config.n_predict)
    n_predict = max(-1, next(n for n in given if n is not None))
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    include = body.stream_options is not None and body.stream_options.include_usage
    ask = _Ask(
        prompt=prompt,
        n_prompt=len(tokens),
        tokens=tokens,
        n_predict=n_predict,
        stream=body.stream,
        include_usage=include,
        stop=stop,
        ignore_eos=body.ignore_eos,
        cache_prompt=body.cache_prompt is not False,
    )
    return replace(ask, params=_params(ask, body))


def _prompt(prompt: str | list[Any] | None, vocab: Vocab) -> tuple[str, tuple[int, ...]]:
    """The prompt's text and token ids: a string (BOS added), token ids, or one of
    either in a list."""
    if prompt is None:
        raise _bad_request("'prompt' is required")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, (BOS, *map(token_id, split_pieces(prompt)))
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return vocab.detokenize(prompt), tuple(prompt)
    raise _bad_request("'prompt' must be a string or a list of token ids (one prompt only)")


def _params(ask: _Ask, body: _GenerateBody) -> dict[str, Any]:
    """The request's sampling settings as llama-server echoes them."""
    params = dict(DEFAULT_PARAMS)
    params.update(
        n_predict=ask.n_predict,
        max_tokens=ask.n_predict,
        stream=ask.stream,
        stop=list(ask.stop),
        ignore_eos=ask.ignore_eos,
    )
    if body.temperature is not None:
        params["temperature"] = body.temperature
    if body.seed is not None:
        params["seed"] = body.seed
    return params


# --------------------------------------------------------------------------- handlers


async def _generate(request: web.Request, kind: Kind) -> web.StreamResponse:
    engine = request.app[SIM_ENGINE]
    config = engine.config
    body = await _read(request, _GenerateBody)
    request[SIM_LORA] = _applied_lora(body.lora, config.lora)
    ask = _parse_ask(kind, body, engine.vocab, config)
    try:
        plan = plan_generation(
            n_predict=ask.n_predict,
            n_prompt=ask.n_prompt,
            n_ctx=config.n_ctx,
            stop=ask.stop,
            eos_after=None if ask.ignore_eos else config.eos_after,
        )
    except ContextExceeded as exc:
        raise ApiError(400, str(exc), "exceed_context_size_error") from exc

    fmt: Format
    if kind == "native":
        fmt = NativeFormat(config.model, ask.prompt, ask.params)
    elif kind == "text":
        fmt = TextFormat(config.model, engine.new_id(), int(time.time()))
    else:
        fmt = ChatFormat(
            config.model, engine.new_id(), int(time.time()), include_usage=ask.include_usage
        )

    job = Job(
        ask.n_prompt, ask.n_predict, ask.params, tokens=ask.tokens, cache_prompt=ask.cache_prompt
    )
    async with engine.occupy(job) as ticket:
        assert ticket.slot is not None
        run = _Run(engine, request, ticket.slot, plan, ask.n_prompt, ticket.cached)
        try:
            if ask.stream:
                return await _stream(request, run, fmt)
            await run.read_prompt()
            while not run.finished:
                await run.step()
        except _ClientGone:
            log.debug("client left; slot %d freed", ticket.slot)
            return web.Response(status=499)
        return json_response(fmt.whole(run))


async def _stream(request: web.Request, run: _Run, fmt: Format) -> web.StreamResponse:
    """Write the run as server-sent events; headers go out with the first token, as in
    llama-server (so a queued request has no response yet)."""
    response: web.StreamResponse | None = None

    async def send(frames: list[dict[str, Any]], tail: bytes = b"") -> None:
        nonlocal response
        if response is None:
            response = web.StreamResponse(headers=SSE_HEADERS)
            await response.prepare(request)
            frames = fmt.opening() + frames
        await response.write(sse(frames) + tail)

    try:
        await run.read_prompt()
        while not run.finished:
            piece = await run.step()
            if piece:
                await send(fmt.partial(piece, run))
        await send(fmt.final(run), SSE_DONE if fmt.done else b"")
        assert response is not None
        await response.write_eof()
    except (_ClientGone, ConnectionResetError):
        log.debug("client left mid-stream; slot %d freed", run.slot)
        return response if response is not None else web.Response(status=499)
    return response


async def _completion(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "native")


async def _text_completion(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "text")


async def _chat_completion(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "chat")


def _applied_lora(lora: list[dict[str, Any]] | None, loaded: tuple[str, ...]) -> str:
    """The adapters a request's ``lora`` field applies (paths, comma-separated).
    Raises :class:`ApiError` 400 for an entry that is not ``{id, scale}`` of a loaded
    adapter."""
    applied = []
    for entry in lora or []:
        ident, scale = entry.get("id"), entry.get("scale")
        if type(ident) is not int or not 0 <= ident < len(loaded):
            raise ApiError(400, f"invalid adapter id {ident!r}", "invalid_request_error")
        if not isinstance(scale, int | float):
            raise ApiError(400, "lora entries need a numeric scale", "invalid_request_error")
        if scale:
            applied.append(loaded[ident])
    return ",".join(applied)


async def _lora_adapters(request: web.Request) -> web.Response:
    config = request.app[SIM_ENGINE].config
    return json_response(
        [
            {"id": i, "path": path, "scale": 0.0, "task_name": "", "prompt_prefix": ""}
            for i, path in enumerate(config.lora)
        ]
    )


async def _health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _props(request: web.Request) -> web.Response:
    config = request.app[SIM_ENGINE].config
    body = props_body(
        model=config.model,
        n_ctx=config.n_ctx,
        slots=config.slots,
        n_predict=config.n_predict,
        slots_endpoint=config.slots_endpoint,
    )
    return json_response(body)


async def _slots(request: web.Request) -> web.Response:
    engine = request.app[SIM_ENGINE]
    if not engine.config.slots_endpoint:
        raise ApiError(
            501,
            "This server does not support slots endpoint. Start it with `--slots`",
            "not_supported_error",
        )
    return json_response([slot_json(view, engine.config.n_ctx) for view in engine.table.slots])


async def _models(request: web.Request) -> web.Response:
    config = request.app[SIM_ENGINE].config
    return json_response(models_body(config.model, config.n_ctx, int(time.time())))


async def _embeddings(request: web.Request) -> web.Response:
    engine = request.app[SIM_ENGINE]
    if not engine.config.embeddings:
        raise ApiError(
            501,
            "This server does not support embeddings. Start it with `--embeddings`",
            "not_supported_error",
        )
    body = await _read(request, _EmbeddingBody)
    given = body.input if body.input is not None else body.content
    if given is None:
        raise _bad_request("'input' is required")
    if isinstance(given, str) or (given and all(isinstance(t, int) for t in given)):
        given = [given]
    texts: list[str] = []
    for item in given:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list) and all(isinstance(t, int) for t in item):
            texts.append(engine.vocab.detokenize(item))
        else:
            raise _bad_request("'input' must be a string, token ids, or a list of either")
    n_tokens = sum(count_tokens(t) for t in texts)
    vectors = [embed(text, seed=engine.config.seed) for text in texts]
    return json_response(embeddings_body(engine.config.model, vectors, n_tokens))


async def _tokenize(request: web.Request) -> web.Response:
    vocab = request.app[SIM_ENGINE].vocab
    body = await _read(request, _TokenizeBody)
    ids = vocab.tokenize(body.content)
    if body.with_pieces:
        return json_response({"tokens": [{"id": i, "piece": vocab.piece(i)} for i in ids]})
    return json_response({"tokens": ids})


async def _detokenize(request: web.Request) -> web.Response:
    vocab = request.app[SIM_ENGINE].vocab
    body = await _read(request, _DetokenizeBody)
    return json_response({"content": vocab.detokenize(body.tokens)})


# --------------------------------------------------------------------------- app

# llama-server lets these through while it loads the model.
_OPEN_WHILE_LOADING = frozenset({"/models", "/v1/models"})


@web.middleware
async def _gate(
    request: web.Request,
    handler: Callable[[web.Request], Any],
) -> web.StreamResponse:
    """Loading, then the API key, then the route, each answered as llama-server does."""
    engine = request.app[SIM_ENGINE]
    await engine.gate(request)
    try:
        if engine.loading and request.path not in _OPEN_WHILE_LOADING:
            raise ApiError(503, "Loading model", "unavailable_error")
        if not engine.authorized(request):
            raise ApiError(401, "Invalid API Key", "authentication_error")
        try:
            response: web.StreamResponse = await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
            raise ApiError(404, "File Not Found", "not_found_error") from exc
        return response
    except ApiError as exc:
        return exc.response()


def make_app(config: SimConfig, *, clock: Clock = time.monotonic) -> web.Application:
    """The simulated server as an aiohttp application.

    Args:
        config: How the server behaves.
        clock: Monotonic seconds; it times only the loading phase (pass a manual clock
            to test loading without sleeping). Tokens are paced by the event loop.
    """
    engine = SimEngine(config, clock)
    app = web.Application(middlewares=[_gate], client_max_size=64 * 1024 * 1024)
    app[SIM_ENGINE] = engine

    async def on_startup(app: web.Application) -> None:
        engine.start()

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = "llama.cpp"
        response.headers["X-Sim-Server"] = config.name
        if request.get(SIM_LORA):
            response.headers["X-Sim-Lora"] = request[SIM_LORA]

    app.on_startup.append(on_startup)
    app.on_response_prepare.append(on_prepare)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/health", _health)
    app.router.add_get("/props", _props)
    app.router.add_get("/slots", _slots)
    app.router.add_get("/lora-adapters", _lora_adapters)
    app.router.add_get("/models", _models)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/completion", _completion)
    app.router.add_post("/completions", _completion)
    app.router.add_post("/v1/completions", _text_completion)
    app.router.add_post("/chat/completions", _chat_completion)
    app.router.add_post("/v1/chat/completions", _chat_completion)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_post("/embeddings", _embeddings)
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_post("/detokenize", _detokenize)
    return app


async def start(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Clock = time.monotonic,
    shutdown_timeout: float = 1.0,
) -> tuple[web.AppRunner, int]:
    """Start a simulated server in this event loop.

    Args:
        config: How the server behaves.
        host: Address to listen on.
        port: Port to listen on; 0 picks a free one.
        clock: See :func:`make_app`.
        shutdown_timeout: How long ``runner.cleanup()`` lets running requests finish
            before cancelling them.

    Returns:
        The runner (call ``await runner.cleanup()`` to stop) and the port it listens on
        (the first socket's, should ``host`` resolve to several addresses).
    """
    runner = web.AppRunner(
        make_app(config, clock=clock),
        handler_cancellation=True,  # a client that leaves frees its slot at once
        shutdown_timeout=shutdown_timeout,
        access_log=None,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1])
    log.info(
        "simulated llama-server %r listening on http://%s:%d (%d slots, %.6g tok/s, model %s)",
        config.name,
        host,
        bound,
        config.slots,
        config.tokens_per_second,
        config.model,
    )
    return runner, bound


async def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run a simulated server until cancelled, then stop it."""
    runner, _ = await start(config, host, port)
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        await runner.cleanup()
        log.info("simulated llama-server %r stopped", config.name)

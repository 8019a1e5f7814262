"""The gateway's HTTP front door: OpenAI-compatible, routed to miners, with failover.

Every completion is streamed from the miner (whatever the user asked), signed with the
gateway's hotkey, and carries the fields a validator's challenge carries (logprobs, token
ids, usage), so a miner cannot tell organic traffic from a challenge; the gateway strips
what the user did not ask for. Order of checks: 413 → 401 → 400 → 404 → 429 → 503.

The HTTP status is held until the first token: a miner that fails before it (refused
connection, error status, error event, no token within ``first_token_timeout``) is
replaced by the next candidate, up to ``max_attempts``. A miner that dies or stalls
(no chunk within ``stall_timeout``) after tokens went out is replaced too: the next
miner serving the same model continues the same generation from the text already sent
(an assistant prefix with ``continue_final_message``; the text prompt plus that text for
``/v1/completions``), with the tokens left of ``max_tokens``, and the user's stream goes
on without a break. When no miner can continue, the stream ends with an OpenAI error
event and no ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from gateway.errors import BadRequest, HttpError, InvalidApiKey, ModelNotFound, NoMinerAvailable, PayloadTooLarge, UpstreamFailed
from gateway.limits import KeyLimits
from gateway.router import MinerView, Router
from gateway.store import Store
from gateway.tokens import TextBinding, TokenCounter
from btauth.client import MinerClient, miner_chunks
from protocol.errors import error_body
from protocol.openai import REQUEST_MODELS, ChatCompletionRequest, ContentNotSupported, describe_validation_error, json_depth
from protocol.responses import ChatChunkChoice, Chunk, StreamFold, TextChunkChoice
from protocol.sse import StreamViolation

log = logging.getLogger(__name__)

OVERHEAD_HEADER = "x-slmnet-overhead-ms"
LEDGER_ID_HEADER = "x-slmnet-request-id"  # the gateway's own id for the request (the ledger's key)
CLIENT_ID = re.compile(r"[\x21-\x7e]{1,128}")  # a client's X-Request-Id we echo: printable, no spaces, bounded
MAX_JSON_DEPTH = 32
MINER_HEADER = "x-slmnet-miner-uid"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STATIC = Path(__file__).with_name("static")
BUSY_RETRY_S = 0.25
PROGRESS_INTERVAL_S = 1.0  # how often the ledger learns the tokens streamed so far


@dataclass(frozen=True)
class GatewaySettings:
    max_body_bytes: int = 1 << 20
    max_attempts: int = 3
    connect_timeout: float = 2.0
    first_token_timeout: float = 15.0
    stall_timeout: float = 10.0
    default_max_tokens: int = 512
    busy_wait: float = 5.0  # seconds to wait for a slot when every miner answers 429
    verify_share: float = 0.0  # share of chat answers put in the organic outbox for a validator to verify


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("slmnet_gateway_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.ttft = Histogram("slmnet_gateway_miner_ttft_seconds", "Time to first token per miner", ["uid"], registry=self.registry,
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.miner_errors = Counter("slmnet_gateway_miner_errors", "Miner failures by kind", ["uid", "kind"], registry=self.registry)
        self.failovers = Counter("slmnet_gateway_failovers", "Requests moved to another miner", ["phase"], registry=self.registry)
        self.overhead = Histogram("slmnet_gateway_overhead_seconds", "Time the gateway itself added", registry=self.registry,
                                  buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05))
        self.tokens = Counter("slmnet_gateway_tokens", "Tokens counted with the model's tokenizer", ["kind"], registry=self.registry)


@dataclass
class GatewayState:
    store: Store
    router: Router
    counters: dict[str, TokenCounter]  # model id → tokenizer
    keypair: Any
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    session: Optional[aiohttp.ClientSession] = None
    limits: Optional[KeyLimits] = None
    contexts: dict[str, int] = field(default_factory=dict)  # model id → context length, from the model list
    rng: random.Random = field(default_factory=random.Random)
    background: set = field(default_factory=set)


class MinerFailed(Exception):
    def __init__(self, kind: str, detail: str, busy: bool = False):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.busy = kind, detail, busy


class ClientGone(Exception):
    """The user hung up: the request ends, the upstream request with it; nobody's failure."""


@web.middleware
async def errors_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Request ids, and every error as one OpenAI error body: ours with its status, anything else a 500."""
    request_id = request["request_id"] = uuid.uuid4().hex  # the ledger's key: never the client's
    client_id = request.headers.get("X-Request-Id", "")
    request["echo_id"] = client_id if CLIENT_ID.fullmatch(client_id) else request_id
    state: GatewayState = request.app["state"]
    try:
        response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        response = _error_response(PayloadTooLarge(f"request body over {state.settings.max_body_bytes} bytes"), request)
    except HttpError as exc:
        response = _error_response(exc, request)
    except web.HTTPException:
        raise  # aiohttp's own (404 for an unknown path, 405): answered by aiohttp
    except Exception:
        log.exception("unexpected error on %s %s (request %s)", request.method, request.path, request_id)
        body = error_body(f"internal error in the gateway; quote request id {request_id}", "server_error", "internal_error")
        response = web.json_response(body, status=500)
    if not response.prepared:
        response.headers.update(request_headers(request))
    state.metrics.requests.labels(request.path if request.path.startswith("/v1/") else "other", str(response.status)).inc()
    return response


def request_headers(request: web.Request) -> dict[str, str]:
    return {"X-Request-Id": request["echo_id"], LEDGER_ID_HEADER: request["request_id"]}


def _error_response(exc: HttpError, request: web.Request) -> web.Response:
    log.info("refused %s %s: %s %s (request %s)", request.method, request.path, exc.status, exc.message, request.get("request_id"))
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


def _authenticate(request: web.Request, state: GatewayState):
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise InvalidApiKey("missing API key: send 'Authorization: Bearer <key>' (create one with `slmnet keys create`)")
    key = state.store.lookup(header[7:].strip())
    if key is None:
        raise InvalidApiKey("unknown API key")
    if key.revoked is not None:
        raise InvalidApiKey("this API key was revoked", "api_key_revoked")
    return key


def _resolve_model(requested: str, router: Router, known: dict[str, TokenCounter]) -> str:
    served = router.models()
    if requested == "auto":
        if not served:
            raise NoMinerAvailable("no healthy miner serves any model right now", headers={"Retry-After": "5"})
        # The best model for a request: the one the validators pay most for in total.
        return max(served, key=lambda model: (sum(m.incentive for m in served[model]), len(served[model])))
    if requested not in known:
        raise ModelNotFound(f"model '{requested}' is not served on this subnet; GET /v1/models lists the models (or use 'auto')")
    if requested not in served:
        raise NoMinerAvailable(f"no healthy miner serves '{requested}' right now", headers={"Retry-After": "5"})
    return requested


@dataclass
class Generation:
    """One user request's answer as it is built, possibly by several miners in turn."""

    chat: bool
    body: dict[str, Any]  # the user's request, validated
    model: str  # the model actually served
    max_tokens: int
    prompt_tokens: int  # counted with the model's tokenizer
    text: str = ""
    upstream_tokens: int = 0  # tokens the miners sent (for the budget of a continuation)
    finish_reason: Optional[str] = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    parts: list[list[Any]] = field(default_factory=list)  # [uid, hotkey, text chars at start]
    failovers: int = 0
    first_answer: Optional[StreamFold] = None  # the first miner's whole answer, as it sent it (organic verification)
    usage: Optional[dict[str, int]] = None  # counted once, when the answer is complete

    def upstream_body(self, from_start: bool = False) -> dict[str, Any]:
        """What the next miner is sent: the continuation of the text so far, or (``from_start``)
        the first miner's request, which its answer is verified against."""
        text, used = ("", 0) if from_start else (self.text, self.upstream_tokens)
        body = {k: v for k, v in self.body.items() if k not in ("stream", "stream_options", "n")}
        body.update(model=self.model, stream=True, stream_options={"include_usage": True}, return_token_ids=True, max_tokens=self.max_tokens - used)
        if self.chat:
            body["logprobs"] = True  # always, as challenges do: miners cannot tell users from validators
            body.pop("max_completion_tokens", None)
            if text:
                body["messages"] = [*self.body["messages"], {"role": "assistant", "content": text}]
                body.update(continue_final_message=True, add_generation_prompt=False)
        elif text:
            body["prompt"] = self.body["prompt"] + text
        return body


async def _miner_events(state: GatewayState, miner: MinerView, body: dict[str, Any], fold: StreamFold, got_tokens: Callable[[], bool]) -> AsyncIterator[Chunk]:
    """One miner's chunks, validated and folded into ``fold``; MinerFailed for anything the miner
    did wrong: an error status (any: the gateway sent a request it validated), a stream that
    breaks the protocol or reports an error, a stall in any phase, a disconnect, no finish."""
    client = MinerClient(state.session, miner.url, state.keypair, miner.hotkey)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=state.settings.connect_timeout)
    wait = state.settings.first_token_timeout
    loop = asyncio.get_running_loop()
    try:
        # One deadline, moved on at every chunk (a timer reschedule; wait_for per event cost 20 µs each).
        async with asyncio.timeout(wait) as deadline:
            async with client.post(path, body, timeout=timeout) as response:
                if response.status != 200:
                    raise MinerFailed("busy" if response.status == 429 else f"http_{response.status}", (await response.text(errors="replace"))[:200], busy=response.status == 429)
                async with contextlib.aclosing(miner_chunks(response, fold)) as chunks:
                    async for chunk in chunks:
                        # The deadline must not run while the user's side is written: suspend it around the yield.
                        deadline.reschedule(None)
                        yield chunk
                        wait = state.settings.stall_timeout if got_tokens() else state.settings.first_token_timeout
                        deadline.reschedule(loop.time() + wait)
        fold.close(require_done=False)
    except TimeoutError as exc:
        raise MinerFailed("stalled", f"no token within {wait:g} s" if not got_tokens() else f"no chunk within {wait:g} s") from exc
    except StreamViolation as exc:
        raise MinerFailed("violation", exc.reason) from exc
    except aiohttp.ClientError as exc:
        raise MinerFailed("connection", f"{type(exc).__name__}: {exc}") from exc
    if fold.error is not None:
        raise MinerFailed("error_event", fold.error[:200])


class Relay:
    """Runs one request across miners and writes the user's answer (streamed or whole)."""

    def __init__(self, request: web.Request, state: GatewayState, generation: Generation, overhead_ms: float):
        self.request, self.state, self.gen = request, state, generation
        self.overhead_ms = overhead_ms  # sent as OVERHEAD_HEADER
        self.user_stream = bool(generation.body.get("stream"))
        self.response: Optional[web.StreamResponse] = None
        self.created = int(time.time())
        self.id = ("chatcmpl-" if generation.chat else "cmpl-") + request["request_id"]
        self.last_progress = time.monotonic()

    def _user_choice(self, choice: Union[ChatChunkChoice, TextChunkChoice], continuing: bool) -> dict[str, Any]:
        """A miner's choice as the user's chunk carries it: only what the user asked for, rebuilt from the validated model."""
        body = self.gen.body
        if isinstance(choice, ChatChunkChoice):
            delta = choice.delta.model_dump(exclude_none=True)
            if continuing:
                delta.pop("role", None)
            logprobs = choice.logprobs.model_dump() if body.get("logprobs") and choice.logprobs is not None else None
            out: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": choice.finish_reason}
        else:
            logprobs = choice.logprobs.model_dump() if body.get("logprobs") is not None and choice.logprobs is not None else None
            out = {"index": 0, "text": choice.text, "logprobs": logprobs, "finish_reason": choice.finish_reason}
        if body.get("return_token_ids"):
            out["token_ids"] = choice.token_ids
        return out

    def _user_event(self, chunk: Chunk, continuing: bool) -> Optional[dict[str, Any]]:
        if not chunk.choices:
            return None  # the usage chunk: replaced by the gateway's own count at the end
        out = {"id": self.id, "object": self._chunk_object, "created": self.created, "model": self.gen.model,
               "choices": [self._user_choice(c, continuing) for c in chunk.choices]}
        if self.gen.body.get("return_token_ids") and chunk.prompt_token_ids is not None and not continuing:
            out["prompt_token_ids"] = chunk.prompt_token_ids
        return out

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.gen.chat else "text_completion"

    def _headers(self) -> dict[str, str]:
        headers = {**request_headers(self.request), OVERHEAD_HEADER: f"{self.overhead_ms:.3f}"}
        if self.gen.parts:
            headers[MINER_HEADER] = ",".join(str(uid) for uid, _, _ in self.gen.parts)  # the miners that answered, in turn
        return headers

    async def _start_stream(self) -> None:
        self.response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **self._headers()})
        try:
            await self.response.prepare(self.request)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGone() from exc

    async def _write(self, event: dict[str, Any], raw: bytes = b"") -> None:
        try:
            await self.response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n" + raw if event else raw)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGone() from exc

    def _absorb(self, chunk: Chunk, binding: TextBinding) -> None:
        for choice in chunk.choices:
            piece = choice.delta.content if isinstance(choice, ChatChunkChoice) else choice.text
            binding.feed(choice.token_ids or [], piece)  # StreamViolation: the user must not read text its ids do not spell
            self.gen.text += piece or ""
            ids = choice.token_ids or []
            self.gen.token_ids += ids
            self.gen.upstream_tokens += len(ids) if ids else (1 if piece else 0)
            if isinstance(choice, ChatChunkChoice) and choice.logprobs is not None:
                self.gen.logprobs += [entry.model_dump() for entry in choice.logprobs.content or []]
            if choice.finish_reason:
                self.gen.finish_reason = choice.finish_reason

    async def _from(self, miner: MinerView) -> None:
        """Stream ``miner``'s answer into the user's; MinerFailed and ClientGone escape."""
        continuing = bool(self.gen.parts) and bool(self.gen.text)
        body = self.gen.upstream_body()
        fold = StreamFold(chat=self.gen.chat, max_tokens=body["max_tokens"], logprobs=bool(body.get("logprobs")))
        sent = time.monotonic()
        first_token_at = None
        tokens_before = self.gen.upstream_tokens
        self.gen.parts.append([miner.uid, miner.hotkey, len(self.gen.text)])
        binding = TextBinding(self.state.counters[self.gen.model])
        async with contextlib.aclosing(_miner_events(self.state, miner, body, fold, lambda: first_token_at is not None)) as chunks:
            async for chunk in chunks:
                try:
                    self._absorb(chunk, binding)
                except StreamViolation as exc:
                    raise MinerFailed("violation", exc.reason) from exc
                if first_token_at is None and self.gen.upstream_tokens > tokens_before:
                    first_token_at = time.monotonic()
                    self.state.metrics.ttft.labels(str(miner.uid)).observe(first_token_at - sent)
                    if self.user_stream and self.response is None:
                        await self._start_stream()
                user_event = self._user_event(chunk, continuing)
                if user_event is not None and self.user_stream and self.response is not None:
                    await self._write(user_event)
                if time.monotonic() - self.last_progress > PROGRESS_INTERVAL_S:
                    self.last_progress = time.monotonic()
                    self.state.store.progress(self.request["request_id"], self.state.counters[self.gen.model].completion(self.gen.text, None))
        if len(self.gen.parts) == 1:
            self.gen.first_answer = fold
        elapsed = time.monotonic() - sent
        produced = self.gen.upstream_tokens - tokens_before
        miner.success(first_token_at - sent if first_token_at else None, produced / elapsed if produced and elapsed > 0 else None)

    async def run(self) -> web.StreamResponse:
        tried: set[int] = set()
        failures: list[tuple[str, bool]] = []  # (what happened, whether it was only a full miner)
        busy_until = time.monotonic() + self.state.settings.busy_wait
        attempts = 0  # miners that took the request (a 429 is not an attempt)
        order: list[MinerView] = []  # the router's order, drawn once and walked: a retry goes to the next best, not to a new draw
        while attempts < self.state.settings.max_attempts and self.gen.finish_reason is None:
            if not order:
                order = [m for m in self.state.router.candidates(self.gen.model) if m.uid not in tried]
            if not order and all(busy for _, busy in failures) and time.monotonic() < busy_until and self.state.router.models().get(self.gen.model):
                # Every miner is at its limit (here or by its own 429): wait for a free slot rather than fail the user.
                await asyncio.sleep(BUSY_RETRY_S)
                tried.clear()
                failures.clear()
                continue
            if not order:
                break
            miner = order.pop(0)
            if not miner.available(time.monotonic()):
                continue  # its breaker opened, or it filled up, since the order was drawn
            tried.add(miner.uid)
            trial = miner.take(time.monotonic())
            try:
                await self._from(miner)
            except MinerFailed as exc:
                # What the miner said goes to the log only: users never read a miner's own words.
                failures.append((f"uid {miner.uid}: {exc.kind}", exc.busy))
                if exc.busy:  # full: nothing was produced, nothing is held against it
                    self.gen.parts.pop()
                    continue
                attempts += 1
                log.warning("miner uid %s failed on request %s (%s); %s", miner.uid, self.request["request_id"], exc, "continuing on another" if self.gen.text else "retrying")
                self.state.metrics.miner_errors.labels(str(miner.uid), exc.kind).inc()
                miner.failure(time.monotonic())
                if self.gen.upstream_tokens >= self.gen.max_tokens:
                    self.gen.finish_reason = "length"  # it failed after the last token it was owed: the answer is whole
                    break
                if self.gen.text:
                    self.gen.failovers += 1
                self.state.metrics.failovers.labels("mid_stream" if self.gen.text else "before_first_token").inc()
            else:
                attempts += 1
            finally:
                miner.release(trial)
        if self.gen.finish_reason is None:
            return await self._fail(failures)
        return await self._finish()

    async def _fail(self, failures: list[tuple[str, bool]]) -> web.StreamResponse:
        detail = "; ".join(what for what, _ in failures) or "no miner could take the request"
        if self.response is None:
            if all(busy for _, busy in failures):
                raise NoMinerAvailable(f"every miner serving '{self.gen.model}' is busy or down; retry shortly", headers={"Retry-After": "2"})
            raise UpstreamFailed(f"no miner could answer ({detail})")
        # The OpenAI stream convention for a failed answer: a last chunk with finish_reason "error", then the error event.
        last = {"id": self.id, "object": self._chunk_object, "created": self.created, "model": self.gen.model,
                "choices": [{"index": 0, **({"delta": {}} if self.gen.chat else {"text": ""}), "logprobs": None, "finish_reason": "error"}]}
        await self._write(last)
        await self._write(error_body(f"the answer was cut: no miner could continue it ({detail})", "server_error", "upstream_failed"))
        await self.response.write_eof()
        return self.response

    async def _finish(self) -> web.StreamResponse:
        usage = self.gen.usage = _usage(self.state, self.gen)
        if self.user_stream:
            if self.response is None:  # finished without a single token
                await self._start_stream()
            final = {"id": self.id, "object": self._chunk_object, "created": self.created, "model": self.gen.model, "choices": [], "usage": usage}
            await self._write(final if (self.gen.body.get("stream_options") or {}).get("include_usage") else {}, b"data: [DONE]\n\n")
            await self.response.write_eof()
            return self.response
        if self.gen.chat:
            message: dict[str, Any] = {"role": "assistant", "content": self.gen.text}
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": self.gen.finish_reason, "logprobs": None}
            if self.gen.body.get("logprobs"):
                choice["logprobs"] = {"content": self.gen.logprobs}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": self.gen.text, "finish_reason": self.gen.finish_reason, "logprobs": None}
            obj = "text_completion"
        if self.gen.body.get("return_token_ids"):
            choice["token_ids"] = self.gen.token_ids
        payload = {"id": self.id, "object": obj, "created": self.created, "model": self.gen.model, "choices": [choice], "usage": usage}
        return web.json_response(payload, headers=self._headers())


async def _parse(request: web.Request, state: GatewayState) -> tuple[bool, dict[str, Any], str]:
    """(chat?, the request as the gateway forwards it, the model to serve); BadRequest naming the field."""
    try:
        raw = await request.json()
    except RecursionError as exc:
        raise BadRequest(f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels", "invalid_json") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", "invalid_json") from exc
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels", "invalid_json")
    wire = REQUEST_MODELS[request.path]
    try:
        parsed = wire.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc), "invalid_fields") from exc
    if parsed.n != 1:
        raise BadRequest("n > 1 is not supported: send n requests", "unsupported_n")
    model = _resolve_model(parsed.model, state.router, state.counters)
    chat = wire is ChatCompletionRequest
    # Only the fields slmnet knows and has checked go on; the rest (and the user's own tag) stay here.
    body = {k: v for k, v in parsed.model_dump(exclude_unset=True, mode="json").items() if k in wire.model_fields and k != "user"}
    if chat:
        try:
            body["messages"] = [m.plain(i) for i, m in enumerate(parsed.messages)]
        except ContentNotSupported as exc:
            raise BadRequest(str(exc), "unsupported_content") from exc
    elif not isinstance(body["prompt"], str):
        raise BadRequest("the gateway takes a single string prompt on /v1/completions", "unsupported_prompt")
    return chat, body, model


async def completions(request: web.Request) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    started = time.monotonic()
    if request.content_length is not None and request.content_length > state.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the {state.settings.max_body_bytes}-byte limit")
    key = _authenticate(request, state)
    chat, body, model = await _parse(request, state)
    counter = state.counters[model]
    prompt_tokens = counter.prompt(messages=body.get("messages"), prompt=body.get("prompt", ""))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or state.settings.default_max_tokens
    context = state.contexts.get(model)
    if context is not None and prompt_tokens + max_tokens > context:
        raise BadRequest(f"{prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed {model}'s context of {context} tokens", "context_length_exceeded")
    reservation = await state.limits.admit(key, prompt_tokens + max_tokens)
    request_id = request["request_id"]
    state.store.open_request(request_id, key.id, model, prompt_tokens)
    generation = Generation(chat=chat, body=body, model=model, max_tokens=max_tokens, prompt_tokens=prompt_tokens)
    overhead_ms = (time.monotonic() - started) * 1000  # everything before the first miner is asked
    state.metrics.overhead.observe(overhead_ms / 1000)
    status = "failed"
    relay = Relay(request, state, generation, overhead_ms)
    try:
        response = await relay.run()
        status = "ok" if generation.finish_reason else "cut"
        return response
    except (ClientGone, asyncio.CancelledError) as exc:
        # The user hung up: the upstream request was closed with the stream; the tokens so far are charged.
        status = "cancelled"
        log.info("client went away on request %s after %s characters", request_id, len(generation.text))
        if isinstance(exc, asyncio.CancelledError):
            raise
        return relay.response or web.Response(status=499)
    finally:
        usage = generation.usage or _usage(state, generation)
        state.limits.settle(reservation, usage["total_tokens"])
        state.store.close_request(request_id, status, usage["completion_tokens"], generation.failovers, _parts(state, generation))
        state.metrics.tokens.labels("prompt").inc(prompt_tokens)
        state.metrics.tokens.labels("completion").inc(usage["completion_tokens"])
        if status == "ok":
            _maybe_sample(state, generation)


def _maybe_sample(state: GatewayState, generation: Generation) -> None:
    """Put a sampled share of chat answers that one miner wrote whole in the organic outbox, for a
    validator to verify like a challenge (it teacher-forces a conversation: text completions are left out)."""
    answer = generation.first_answer
    if not (generation.chat and answer is not None and not generation.failovers and state.settings.verify_share):
        return
    miner = state.router.miners.get(generation.parts[0][0])
    if miner is None or state.rng.random() >= state.settings.verify_share:
        return
    state.store.record_sample(miner.uid, miner.hotkey, generation.model, generation.upstream_body(from_start=True), {
        "prompt_token_ids": answer.prompt_token_ids, "token_ids": answer.token_ids, "logprobs": [entry.logprob for entry in answer.logprobs],
        "text": answer.text, "finish_reason": answer.finish_reason, "completion_tokens": answer.usage.completion_tokens if answer.usage else None})
    miner.sampled += 1


def _usage(state: GatewayState, generation: Generation) -> dict[str, int]:
    """Usage counted with the model's tokenizer (never the miner's count)."""
    completion = state.counters[generation.model].completion(generation.text, generation.finish_reason)
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": completion, "total_tokens": generation.prompt_tokens + completion}


def _parts(state: GatewayState, generation: Generation) -> list[tuple[int, str, int]]:
    """Completion tokens per miner that produced part of the text."""
    if len(generation.parts) == 1 and generation.usage is not None:
        uid, hotkey, _ = generation.parts[0]
        return [(uid, hotkey, generation.usage["completion_tokens"])]
    counter = state.counters[generation.model]
    parts = []
    for index, (uid, hotkey, start) in enumerate(generation.parts):
        end = generation.parts[index + 1][2] if index + 1 < len(generation.parts) else len(generation.text)
        last = index == len(generation.parts) - 1
        parts.append((uid, hotkey, counter.completion(generation.text[start:end], generation.finish_reason if last else None)))
    return [p for p in parts if p[2] or p == parts[-1]]


async def list_models(request: web.Request) -> web.Response:
    state: GatewayState = request.app["state"]
    served = state.router.models()
    data = [{"id": model, "object": "model", "created": 0, "owned_by": "slmnet", "miners": len(miners)} for model, miners in sorted(served.items())]
    if served:
        data.append({"id": "auto", "object": "model", "created": 0, "owned_by": "slmnet", "miners": sum(len(m) for m in served.values())})
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    served = request.app["state"].router.models()
    return web.json_response({"status": "ok" if served else "no_miners", "models": {m: len(v) for m, v in served.items()}}, status=200 if served else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app["state"].metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def leaderboard(request: web.Request) -> web.Response:
    """What the dashboard shows: every miner the gateway knows, with its live figures and history."""
    state: GatewayState = request.app["state"]
    rows = []
    for m in sorted(state.router.miners.values(), key=lambda m: -m.incentive):
        rows.append({"uid": m.uid, "hotkey": m.hotkey, "model": m.model, "incentive": m.incentive, "healthy": m.healthy,
                     "breaker": m.breaker(time.monotonic()), "ttft_s": m.ttft, "tokens_per_s": m.tokens_per_s, "requests": m.requests,
                     "errors": m.errors, "error_rate": m.error_rate, "in_flight": m.in_flight, "capacity": m.capacity,
                     "sampled": m.sampled,
                     "history": [{"t": t, "ttft_s": a, "tokens_per_s": b, "error_rate": c} for t, a, b, c in m.history]})
    return web.json_response({"miners": rows, "models": sorted(state.router.models()), "organic_share": state.settings.verify_share})


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def create_app(state: GatewayState) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=state.settings.max_body_bytes)
    app["state"] = state
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/leaderboard", leaderboard)
    app.router.add_get("/", dashboard)

    async def open_session(app: web.Application) -> None:
        if state.session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3)
            state.session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        if state.limits is None:
            state.limits = KeyLimits(state.store)

    async def close_session(app: web.Application) -> None:
        for task in list(state.background):
            task.cancel()
        if state.session is not None:
            await state.session.close()

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    return app

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
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from gateway.errors import BadRequest, HttpError, InvalidApiKey, ModelNotFound, NoMinerAvailable, PayloadTooLarge, UpstreamFailed
from gateway.limits import KeyLimits
from gateway.router import MinerView, Router
from gateway.store import Store
from gateway.tokens import TokenCounter
from miner.client import MinerClient, sse_events
from protocol.openai import REQUEST_MODELS, ChatCompletionRequest, describe_validation_error, error_body

log = logging.getLogger(__name__)

OVERHEAD_HEADER = "x-slmnet-overhead-ms"
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
    verify_share: float = 0.0  # share of organic answers sent to the verifier


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
    verifier: Optional[Callable[[MinerView, dict[str, Any], list[dict[str, Any]]], Awaitable[None]]] = None  # organic verification
    session: Optional[aiohttp.ClientSession] = None
    limits: Optional[KeyLimits] = None
    rng: random.Random = field(default_factory=random.Random)
    background: set = field(default_factory=set)


class MinerFailed(Exception):
    def __init__(self, kind: str, detail: str, busy: bool = False):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.busy = kind, detail, busy


class ClientRejected(Exception):
    """The engine refused the request itself (4xx other than 429): the user's problem, not the miner's."""

    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


@web.middleware
async def errors_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    request["request_id"] = request_id
    state: GatewayState = request.app["state"]
    try:
        response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        response = _error_response(PayloadTooLarge(f"request body over {state.settings.max_body_bytes} bytes"), request)
    except HttpError as exc:
        response = _error_response(exc, request)
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    state.metrics.requests.labels(request.path if request.path.startswith("/v1/") else "other", str(response.status)).inc()
    return response


def _error_response(exc: HttpError, request: web.Request) -> web.Response:
    log.info("refused %s %s: %s %s (request %s)", request.method, request.path, exc.status, exc.message, request.get("request_id"))
    return web.json_response(error_body(exc.message, exc.type, exc.code), status=exc.status, headers=exc.headers)


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
    events: list[dict[str, Any]] = field(default_factory=list)  # raw events of the first miner (organic verification)
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


async def _miner_events(state: GatewayState, miner: MinerView, body: dict[str, Any], got_tokens: Callable[[], bool]) -> AsyncIterator[dict[str, Any]]:
    """Events of one miner's stream; MinerFailed when it fails, stalls or ends without finishing."""
    client = MinerClient(state.session, miner.url, state.keypair, miner.hotkey)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=state.settings.connect_timeout, sock_read=state.settings.first_token_timeout)
    finished = False
    try:
        async with client.post(path, body, timeout=timeout) as response:
            if response.status == 429:
                raise MinerFailed("busy", (await response.text())[:200], busy=True)
            if 400 <= response.status < 500 and response.status not in (401, 403, 404, 408):
                raise ClientRejected(response.status, await response.read())
            if response.status != 200:
                raise MinerFailed(f"http_{response.status}", (await response.text())[:200])
            loop = asyncio.get_running_loop()
            stream = sse_events(response)
            wait = state.settings.first_token_timeout
            # One deadline, moved on at every event (a timer reschedule; wait_for per event cost 20 µs each).
            async with asyncio.timeout(wait) as deadline:
                while True:
                    try:
                        event = await stream.__anext__()
                    except StopAsyncIteration:
                        break
                    if "error" in event:
                        raise MinerFailed("error_event", str(event["error"].get("message", event["error"]))[:200])
                    finished = finished or any(c.get("finish_reason") for c in event.get("choices") or [])
                    # The deadline must not run while the user's side is written: suspend it around the yield.
                    deadline.reschedule(None)
                    yield event
                    wait = state.settings.stall_timeout if got_tokens() else state.settings.first_token_timeout
                    deadline.reschedule(loop.time() + wait)
    except TimeoutError as exc:
        raise MinerFailed("stalled", f"no chunk within {wait:g} s") from exc
    except (aiohttp.ClientError, ValueError) as exc:
        raise MinerFailed("connection", f"{type(exc).__name__}: {exc}") from exc
    if not finished:
        raise MinerFailed("incomplete", "the stream ended without a finish_reason")


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

    def _user_event(self, event: dict[str, Any], continuing: bool) -> Optional[dict[str, Any]]:
        body = self.gen.body
        choices = []
        for choice in event.get("choices") or []:
            choice = dict(choice)
            if not body.get("return_token_ids"):
                choice.pop("token_ids", None)
            if self.gen.chat and not body.get("logprobs"):
                choice.pop("logprobs", None)
            if not self.gen.chat and body.get("logprobs") is None:
                choice.pop("logprobs", None)
            if continuing and self.gen.chat and "delta" in choice:
                choice["delta"] = {k: v for k, v in choice["delta"].items() if k != "role"}
            choices.append(choice)
        if not choices:
            return None  # the usage chunk: replaced by the gateway's own count at the end
        out = {"id": self.id, "object": "chat.completion.chunk" if self.gen.chat else "text_completion", "created": self.created, "model": self.gen.model, "choices": choices}
        if body.get("return_token_ids") and event.get("prompt_token_ids") is not None and not continuing:
            out["prompt_token_ids"] = event["prompt_token_ids"]
        return out

    def _headers(self) -> dict[str, str]:
        headers = {"X-Request-Id": self.request["request_id"], OVERHEAD_HEADER: f"{self.overhead_ms:.3f}"}
        if self.gen.parts:
            headers[MINER_HEADER] = ",".join(str(uid) for uid, _, _ in self.gen.parts)  # the miners that answered, in turn
        return headers

    async def _start_stream(self) -> None:
        self.response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **self._headers()})
        await self.response.prepare(self.request)

    async def _write(self, event: dict[str, Any]) -> None:
        await self.response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")

    def _absorb(self, event: dict[str, Any]) -> None:
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") if self.gen.chat else choice.get("text")
            self.gen.text += piece or ""
            ids = choice.get("token_ids") or []
            self.gen.token_ids += ids
            self.gen.upstream_tokens += len(ids) if ids else (1 if piece else 0)
            if self.gen.chat:
                self.gen.logprobs += (choice.get("logprobs") or {}).get("content") or []
            if choice.get("finish_reason"):
                self.gen.finish_reason = choice["finish_reason"]

    async def _from(self, miner: MinerView) -> None:
        """Stream ``miner``'s answer into the user's; MinerFailed / ClientRejected escape."""
        continuing = bool(self.gen.parts) and bool(self.gen.text)
        body = self.gen.upstream_body()
        sent = time.monotonic()
        first_token_at = None
        tokens_before = self.gen.upstream_tokens
        self.gen.parts.append([miner.uid, miner.hotkey, len(self.gen.text)])
        async for event in _miner_events(self.state, miner, body, lambda: first_token_at is not None):
            if not self.gen.failovers and len(self.gen.parts) == 1:
                self.gen.events.append(event)
            self._absorb(event)
            if first_token_at is None and self.gen.upstream_tokens > tokens_before:
                first_token_at = time.monotonic()
                self.state.metrics.ttft.labels(str(miner.uid)).observe(first_token_at - sent)
                if self.user_stream and self.response is None:
                    await self._start_stream()
            user_event = self._user_event(event, continuing)
            if user_event is not None and self.user_stream and self.response is not None:
                await self._write(user_event)
            if time.monotonic() - self.last_progress > PROGRESS_INTERVAL_S:
                self.last_progress = time.monotonic()
                self.state.store.progress(self.request["request_id"], self.state.counters[self.gen.model].completion(self.gen.text, None))
        elapsed = time.monotonic() - sent
        produced = self.gen.upstream_tokens - tokens_before
        miner.success(first_token_at - sent if first_token_at else None, produced / elapsed if produced and elapsed > 0 else None)

    async def run(self) -> web.StreamResponse:
        tried: set[int] = set()
        failures: list[tuple[str, bool]] = []  # (what happened, whether it was only a full miner)
        busy_until = time.monotonic() + self.state.settings.busy_wait
        attempts = 0  # miners that took the request (a 429 is not an attempt)
        while attempts < self.state.settings.max_attempts and self.gen.finish_reason is None:
            candidates = [m for m in self.state.router.candidates(self.gen.model) if m.uid not in tried]
            if not candidates and all(busy for _, busy in failures) and time.monotonic() < busy_until and self.state.router.models().get(self.gen.model):
                # Every miner is at its limit (here or by its own 429): wait for a free slot rather than fail the user.
                await asyncio.sleep(BUSY_RETRY_S)
                tried.clear()
                failures.clear()
                continue
            if not candidates:
                break
            miner = candidates[0]
            tried.add(miner.uid)
            if miner.breaker(time.monotonic()) == "half-open":
                miner.trial_in_flight = True
            miner.in_flight += 1
            try:
                await self._from(miner)
            except ClientRejected as exc:
                # The engine refused the request itself (too long a prompt, a bad option): the same everywhere.
                miner.success(None, None)
                if not self.gen.text and self.response is None:
                    return web.Response(body=exc.body, status=exc.status, headers={"Content-Type": "application/json", **self._headers()})
                failures.append((f"uid {miner.uid} refused the continuation: HTTP {exc.status} {exc.body[:200]!r}", False))
                break
            except MinerFailed as exc:
                failures.append((f"uid {miner.uid}: {exc}", exc.busy))
                if exc.busy:  # full: nothing was produced, nothing is held against it
                    self.gen.parts.pop()
                    continue
                attempts += 1
                log.warning("miner uid %s failed on request %s (%s); %s", miner.uid, self.request["request_id"], exc, "continuing on another" if self.gen.text else "retrying")
                self.state.metrics.miner_errors.labels(str(miner.uid), exc.kind).inc()
                miner.failure(time.monotonic())
                if self.gen.text:
                    self.gen.failovers += 1
                self.state.metrics.failovers.labels("mid_stream" if self.gen.text else "before_first_token").inc()
            else:
                attempts += 1
            finally:
                miner.in_flight -= 1
        if self.gen.finish_reason is None:
            return await self._fail(failures)
        return await self._finish()

    async def _fail(self, failures: list[tuple[str, bool]]) -> web.StreamResponse:
        detail = "; ".join(what for what, _ in failures) or "no miner could take the request"
        if self.response is None:
            if all(busy for _, busy in failures):
                raise NoMinerAvailable(f"every miner serving '{self.gen.model}' is busy or down; retry shortly", headers={"Retry-After": "2"})
            raise UpstreamFailed(f"no miner could answer ({detail})")
        error = error_body(f"the answer was cut: no miner could continue it ({detail})", "server_error", "upstream_failed")
        await self._write(error)
        await self.response.write_eof()
        return self.response

    async def _finish(self) -> web.StreamResponse:
        usage = self.gen.usage = _usage(self.state, self.gen)
        if self.user_stream:
            if self.response is None:  # finished without a single token
                await self._start_stream()
            if (self.gen.body.get("stream_options") or {}).get("include_usage"):
                await self._write({"id": self.id, "object": "chat.completion.chunk" if self.gen.chat else "text_completion", "created": self.created,
                                   "model": self.gen.model, "choices": [], "usage": usage})
            await self.response.write(b"data: [DONE]\n\n")
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


async def completions(request: web.Request) -> web.StreamResponse:
    state: GatewayState = request.app["state"]
    started = time.monotonic()
    if request.content_length is not None and request.content_length > state.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the {state.settings.max_body_bytes}-byte limit")
    key = _authenticate(request, state)
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", "invalid_json") from exc
    wire = REQUEST_MODELS[request.path]
    try:
        parsed = wire.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc), "invalid_fields") from exc
    if parsed.n != 1:
        raise BadRequest("n > 1 is not supported: send n requests", "unsupported_n")
    model = _resolve_model(parsed.model, state.router, state.counters)
    chat = wire is ChatCompletionRequest
    body = parsed.model_dump(exclude_unset=True, mode="json")
    if not chat and not isinstance(body["prompt"], str):
        raise BadRequest("the gateway takes a single string prompt on /v1/completions", "unsupported_prompt")
    counter = state.counters[model]
    prompt_tokens = counter.prompt(messages=body.get("messages"), prompt=body.get("prompt", ""))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or state.settings.default_max_tokens
    reservation = await state.limits.admit(key, prompt_tokens + max_tokens)
    request_id = request["request_id"]
    state.store.open_request(request_id, key.id, model, prompt_tokens)
    generation = Generation(chat=chat, body=body, model=model, max_tokens=max_tokens, prompt_tokens=prompt_tokens)
    overhead_ms = (time.monotonic() - started) * 1000  # everything before the first miner is asked
    state.metrics.overhead.observe(overhead_ms / 1000)
    status = "failed"
    try:
        response = await Relay(request, state, generation, overhead_ms).run()
        status = "ok" if generation.finish_reason else "cut"
        return response
    except asyncio.CancelledError:
        status = "client_gone"
        raise
    finally:
        usage = generation.usage or _usage(state, generation)
        state.limits.settle(reservation, usage["total_tokens"])
        state.store.close_request(request_id, status, usage["completion_tokens"], generation.failovers, _parts(state, generation))
        state.metrics.tokens.labels("prompt").inc(prompt_tokens)
        state.metrics.tokens.labels("completion").inc(usage["completion_tokens"])
        if status == "ok":
            _maybe_verify(state, generation)


def _maybe_verify(state: GatewayState, generation: Generation) -> None:
    """Send a sampled share of chat answers that one miner wrote whole to the verifier (in the
    background); the verifier teacher-forces a conversation, so text completions are left out."""
    if not (generation.chat and generation.events and not generation.failovers and state.verifier):
        return
    miner = state.router.miners.get(generation.parts[0][0])
    if miner is None or state.rng.random() >= state.settings.verify_share:
        return
    task = asyncio.create_task(state.verifier(miner, generation.upstream_body(from_start=True), generation.events))
    state.background.add(task)
    task.add_done_callback(state.background.discard)


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
    fidelity = request.app.get("fidelity", {})
    rows = []
    for m in sorted(state.router.miners.values(), key=lambda m: -m.incentive):
        passed, checked = fidelity.get(m.uid, (0, 0))
        rows.append({"uid": m.uid, "hotkey": m.hotkey, "model": m.model, "incentive": m.incentive, "healthy": m.healthy,
                     "breaker": m.breaker(time.monotonic()), "ttft_s": m.ttft, "tokens_per_s": m.tokens_per_s, "requests": m.requests,
                     "errors": m.errors, "error_rate": m.error_rate, "in_flight": m.in_flight, "capacity": m.capacity,
                     "fidelity_pass_rate": passed / checked if checked else None, "verified": checked,
                     "history": [{"t": t, "ttft_s": a, "tokens_per_s": b, "error_rate": c} for t, a, b, c in m.history]})
    return web.json_response({"miners": rows, "models": sorted(state.router.models())})


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def create_app(state: GatewayState) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=state.settings.max_body_bytes)
    app["state"] = state
    app["fidelity"] = {}
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

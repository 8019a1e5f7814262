"""The miner's HTTP front end: an authenticating, metering proxy in front of vLLM.

Every request but ``/health`` is checked in this order, each failure with its own
status and a JSON error body: size (413), btauth/1 signature (401), sender standing
(403), JSON and fields (400), model (404), engine state (503), in-flight limits (429).
Accepted requests are forwarded to the engine byte for byte; streamed answers are
passed on chunk by chunk as they arrive, never buffered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Optional

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from chain import Chain
from engine import Engine
from miner.auth import Sender
from miner.errors import BadRequest, EngineUnavailable, HttpError, ModelNotFound, PayloadTooLarge
from miner.metrics import MinerMetrics
from miner.state import STATE, MinerState
from miner.sync import metagraph_ctx
from protocol import openapi
from protocol.errors import http_layer_refusal, internal_error
from protocol.openai import REQUEST_MODELS, describe_validation_error
from protocol.sse import SSE_HEADERS
from shell.role import may_scrape, supervise

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json"}
OVERHEAD_HEADER = "X-Slmnet-Miner-Overhead-Ms"  # ms from request received to request sent to the engine


# --- errors -----------------------------------------------------------------------------


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """The one place an HttpError becomes a response: status, headers, OpenAI error body."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    request["request_id"] = request_id
    state = request.app[STATE]
    try:
        response = await handler(request)
    except HttpError as exc:
        log.info("refused %s %s from %s: %s %s (request %s)", request.method, request.path, request.remote, exc.status, exc.message, request_id)
        state.metrics.refusals.labels(exc.code).inc()
        response = web.json_response(exc.body(), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = http_layer_refusal(exc)
    except Exception:
        response = internal_error(log, "miner", request, request_id)
    response.headers.setdefault("X-Request-Id", request_id)
    if not response.prepared:
        state.metrics.requests.labels(request.path, str(response.status)).inc()
    return response


# --- read-only routes -------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = {
        "status": "ok" if state.engine.ready else "unavailable",
        "engine": state.engine.state,
        "engine_restarts": state.engine.restarts,
        "model": state.declaration.model,
        "hotkey": state.hotkey,
        "uid": state.uid,
        "metagraph_block": state.gate.block,
        "in_flight": state.admission.in_flight,
    }
    return web.json_response(body, status=200 if state.engine.ready else 503)


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _authenticate(request, state)
    d = state.declaration
    entry = {
        "id": d.model,
        "object": "model",
        "owned_by": state.hotkey,
        "max_model_len": d.max_context,
        "slmnet": {"uid": state.uid, "hotkey": state.hotkey, "declaration": d.model_dump(exclude_none=True), "engine": state.engine.state},
    }
    return web.json_response({"object": "list", "data": [entry]})


MINER_OPERATIONS = [
    *openapi.completions((400, 401, 403, 404, 413, 429, 503)),
    openapi.Operation("get", "/v1/models", "The model this miner serves and its declaration", errors=(401, 403)),
    openapi.Operation("get", "/health", "Whether the engine is up", errors=(503,), authenticated=False),
]
# btauth/1 (bittensor.http_auth): every header is required and signs method, path, body, nonce and receiver.
BTAUTH = {
    header.removeprefix("X-Bittensor-").lower(): {"type": "apiKey", "in": "header", "name": header, "description": "btauth/1, bittensor.http_auth.sign"}
    for header in ("X-Bittensor-Version", "X-Bittensor-Hotkey", "X-Bittensor-Nonce", "X-Bittensor-Signature", "X-Bittensor-Receiver")
}


def openapi_spec(model: str) -> dict[str, Any]:
    """The miner's OpenAPI document, for a miner serving ``model``."""
    return openapi.document("slmnet miner", MINER_OPERATIONS, [model], BTAUTH)


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec(request.app[STATE].declaration.model))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus: for a scraper this role allows (``shell.role.may_scrape``), or a signed caller (a validator)."""
    state = request.app[STATE]
    if not may_scrape(request, state.config.metrics_token):
        await _authenticate(request, state)
    m = state.metrics
    m.engine_up.set(1 if state.engine.ready else 0)
    m.engine_restarts.set(state.engine.restarts)
    m.metagraph_block.set(state.gate.block or 0)
    return web.Response(body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- completions ------------------------------------------------------------------------


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions`` and ``POST /v1/completions``."""
    received = time.perf_counter()
    state = request.app[STATE]
    body = await _read_body(request, state.config.max_body_bytes)
    sender = state.gate.check(request.headers, body, request.method, request.path_qs)
    stream = _validate(request.path, body, state.declaration.model)
    if not state.engine.ready:
        raise EngineUnavailable(f"the engine is {state.engine.state}; retry later", headers={"Retry-After": "5"})
    with state.admission.admit(sender.hotkey):
        state.metrics.in_flight.inc()
        try:
            return await _forward(request, state, sender, body, stream, received)
        finally:
            state.metrics.in_flight.dec()
            state.metrics.duration.labels(request.path).observe(time.perf_counter() - received)


async def _authenticate(request: web.Request, state: MinerState) -> Sender:
    body = await _read_body(request, state.config.max_body_bytes)
    return state.gate.check(request.headers, body, request.method, request.path_qs)


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes is over the {limit}-byte limit")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"body is over the {limit}-byte limit") from None


def _validate(path: str, body: bytes, served: str) -> bool:
    """Check the body's shape and model; returns whether the answer is streamed."""
    try:
        payload = REQUEST_MODELS[path].model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("body is not valid JSON", code="invalid_json") from None
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            raise BadRequest("body must be a JSON object", code="invalid_json") from None
        raise BadRequest(describe_validation_error(exc), code="invalid_fields") from None
    if payload.model != served:
        raise ModelNotFound(f"this miner serves {served!r}, not {payload.model!r}")
    return payload.stream


async def _forward(request: web.Request, state: MinerState, sender: Sender, body: bytes, stream: bool, received: float) -> web.StreamResponse:
    engine = state.engine
    # What the miner itself spent before the engine saw the request: auth, parsing, admission.
    request["overhead_ms"] = f"{(time.perf_counter() - received) * 1000:.3f}"
    upstream = await _send(state, request.path, body)
    async with upstream:
        if stream and upstream.status == 200:
            return await _relay_stream(request, state, upstream, received)
        try:
            data = await upstream.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            engine.mark_down(f"{type(exc).__name__}: {exc}")
            raise EngineUnavailable("the engine failed while answering; retry later") from exc
    state.metrics.ttfb.labels(request.path).observe(time.perf_counter() - received)
    if upstream.status == 200:
        _count_usage(state.metrics, data)
    else:
        log.info("engine answered %s to uid %s (request %s): %s", upstream.status, sender.uid, request["request_id"], data[:200])
    headers = {"Content-Type": upstream.headers.get("Content-Type", "application/json"), OVERHEAD_HEADER: request["overhead_ms"]}
    return web.Response(body=data, status=upstream.status, headers=headers)


async def _send(state: MinerState, path: str, body: bytes) -> aiohttp.ClientResponse:
    """POST to the engine. A kept-alive connection the engine closed at the same moment
    (ServerDisconnectedError before any answer) is retried once on a fresh connection."""
    for attempt in (1, 2):
        try:
            return await state.http.post(state.engine.url + path, data=body, headers=JSON_HEADERS)
        except aiohttp.ServerDisconnectedError as exc:
            if attempt == 2:
                raise EngineUnavailable("the engine closed the connection; retry later", headers={"Retry-After": "1"}) from exc
        except aiohttp.ClientConnectorError as exc:
            state.engine.mark_down(f"{type(exc).__name__}: {exc}")
            raise EngineUnavailable("the engine is not answering; retry later", headers={"Retry-After": "5"}) from exc
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise EngineUnavailable(f"the engine failed: {type(exc).__name__}; retry later", headers={"Retry-After": "1"}) from exc
    raise AssertionError("unreachable")


async def _relay_stream(request: web.Request, state: MinerState, upstream: aiohttp.ClientResponse, received: float) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    response.headers["X-Request-Id"] = request["request_id"]
    response.headers[OVERHEAD_HEADER] = request["overhead_ms"]
    state.metrics.requests.labels(request.path, "200").inc()
    await response.prepare(request)
    events = 0
    try:
        async for chunk in _chunks(upstream, state.engine):
            if not events:
                state.metrics.ttfb.labels(request.path).observe(time.perf_counter() - received)
            events += chunk.count(b"data:")
            await response.write(chunk)
    except EngineUnavailable as exc:
        # The status line is gone already: end the stream with an error event the
        # caller can tell from a normal end (no [DONE]).
        await response.write(b"data: " + json.dumps(exc.body()).encode() + b"\n\n")
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("caller went away mid-stream (request %s); the engine request is aborted", request["request_id"])
        return response
    finally:
        state.metrics.stream_events.inc(events)
    await response.write_eof()
    return response


async def _chunks(upstream: aiohttp.ClientResponse, engine: Engine) -> AsyncIterator[bytes]:
    """The engine's bytes as they arrive; EngineUnavailable if it dies mid-answer."""
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        engine.mark_down(f"{type(exc).__name__}: {exc}")
        raise EngineUnavailable("the engine failed mid-stream") from exc


def _count_usage(metrics: MinerMetrics, data: bytes) -> None:
    try:
        tokens = json.loads(data)["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError):
        return
    metrics.completion_tokens.inc(tokens)


# --- background loops -------------------------------------------------------------------


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=state.config.engine_timeout)
    # No connection cap: admission control is the limit. Idle connections are dropped
    # before the engine's own keep-alive timeout (uvicorn: 5 s) so we never race its close.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3)
    state.session = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False)
    yield
    await state.session.close()


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    task = asyncio.create_task(supervise("the engine's supervisor", lambda: state.engine.run(state.http)), name="engine")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def create_app(state: MinerState, chain: Optional[Chain] = None, wallet: Any = None) -> web.Application:
    """The miner's app. With ``chain`` and ``wallet`` it refreshes the metagraph (and
    re-publishes its presence when the chain disagrees) every ``metagraph_interval``."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=state.config.max_body_bytes)
    app[STATE] = state
    app.cleanup_ctx.append(_session_ctx)
    app.cleanup_ctx.append(_engine_ctx)
    if chain is not None:
        app.cleanup_ctx.append(metagraph_ctx(chain, wallet))
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    return app

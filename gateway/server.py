"""The gateway's HTTP front door: the OpenAI-compatible routes, request checks, errors, dashboard.

Order of checks: 413 → 401 → 400 → 404 → 429 → 503; every error, ours or unexpected, is one
OpenAI error body (``errors_middleware``). A completion is validated fully here (every
field's range, content parts, nesting depth, the model's context), admitted against the
key's limits, then run by ``gateway.relay`` across miners.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from gateway import handover
from gateway.answer import Generation
from gateway.auto import FLAVOURS, Choice, classify
from gateway.errors import BadRequest, HttpError, InvalidApiKey, MetricsRefused, ModelNotFound, NoMinerAvailable, PayloadTooLarge
from gateway.ledger import Ledger
from gateway.limits import KeyLimits
from gateway.relay import ClientGone, Relay, maybe_sample, parts_of, usage_of
from gateway.state import CLIENT_ID, ENTROPY, MODEL_HEADER, ROUTE_HEADER, STATE, Clients, GatewayState, request_headers
from protocol import openapi
from protocol.errors import error_body, http_layer_refusal, internal_error
from protocol.families import FAMILIES
from protocol.openai import REQUEST_MODELS, ChatCompletionRequest, ContentNotSupported, describe_validation_error, json_depth
from shell.role import may_scrape

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = 32
# OpenAI fields that change what an answer is: dropping them would answer another question, so they are refused.
# Others the gateway does not know (metadata, store, service_tier, user, …) are dropped: they never reach a miner.
REFUSED_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
)
# Values of those fields that ask for nothing the models do not do anyway: accepted, and dropped with them
# (clients and agent frameworks send them by default).
HARMLESS_VALUES = {"response_format": ({"type": "text"},), "tool_choice": ("none",), "parallel_tool_calls": (False,), "function_call": ("none",)}
STATIC = Path(__file__).with_name("static")


@web.middleware
async def errors_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Request ids, and every error as one OpenAI error body: ours with its status, anything else a 500."""
    request_id = request["request_id"] = ENTROPY.request_id()  # the ledger's key: never the client's
    client_id = request.headers.get("X-Request-Id", "")
    request["echo_id"] = client_id if CLIENT_ID.fullmatch(client_id) else request_id
    state: GatewayState = request.app[STATE]
    try:
        response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        response = _error_response(PayloadTooLarge(f"request body over {state.settings.max_body_bytes} bytes"), request)
    except HttpError as exc:
        response = _error_response(exc, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = http_layer_refusal(exc)
    except Exception:
        response = internal_error(log, "gateway", request, request_id)
    if not response.prepared:
        response.headers.update(request_headers(request))
    state.metrics.requests.labels(request.path if request.path.startswith("/v1/") else "other", str(response.status)).inc()
    return response


CORS_HEADERS = "Authorization, Content-Type, X-Request-Id"
EXPOSED = (
    "X-Request-Id, x-slmnet-request-id, x-slmnet-miner-uid, x-slmnet-overhead-ms, x-slmnet-model, x-slmnet-route, Retry-After, x-ratelimit-limit-requests, \
x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
)


def _allowed_origin(request: web.Request) -> str | None:
    origins = request.app[STATE].settings.cors_origins
    origin = request.headers.get("Origin")
    if not origin or not origins:
        return None
    return "*" if "*" in origins else origin if origin in origins else None


@web.middleware
async def cors_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """CORS for browser apps on the configured origins (--cors-origin), on every answer, errors included.
    A streamed response gets its headers in the relay before it is prepared."""
    request["cors"] = {}
    if (origin := _allowed_origin(request)) is not None:
        request["cors"] = {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": EXPOSED, "Vary": "Origin"}
    # A preflight is answered here, before routing: an OPTIONS route over /v1/* would turn every unknown
    # path under it into a 405 (the path "exists" for OPTIONS) instead of the 404 it is.
    response = await (preflight(request) if request.method == "OPTIONS" and request.path.startswith("/v1/") else handler(request))
    if not response.prepared:
        response.headers.update(request["cors"])
    return response


async def preflight(request: web.Request) -> web.Response:
    if _allowed_origin(request) is None:
        return web.json_response(
            error_body("this origin may not call the API (the gateway's --cors-origin)", "invalid_request_error", "origin_not_allowed"), status=403
        )
    methods = {"Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Allow-Headers": CORS_HEADERS, "Access-Control-Max-Age": "600"}
    return web.Response(status=204, headers=methods)


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
    if key.expires is not None and key.expires <= time.time():
        raise InvalidApiKey(f"this API key expired at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(key.expires))}", "api_key_expired")
    return key


def _resolve_model(requested: str, body: dict[str, Any], max_tokens: int, state: GatewayState) -> tuple[str, Optional[Choice]]:
    """The model to serve (and, for "auto", the choice that named it): 404 for a model no miner
    declares, naming those that are served; 503 for one whose miners are all down now."""
    served = state.router.models()
    if requested in FLAVOURS:
        if not served:
            raise NoMinerAvailable("no healthy miner serves any model right now", headers={"Retry-After": "5"})
        choice = state.router.auto.choose(requested, classify(body), state.router.paid(served), max_tokens)
        return choice.model, choice
    if requested in served:
        return requested, None
    if requested in state.tokenizers and any(m.model == requested for m in state.router.miners.values()):
        raise NoMinerAvailable(f"no healthy miner serves '{requested}' right now", headers={"Retry-After": "5"})
    names = ", ".join(f"'{m}'" for m in [*sorted(served), *FLAVOURS])
    raise ModelNotFound(f"model '{requested}' is not served on this subnet; the models served now: {names} (GET /v1/models lists them)")


async def _parse(request: web.Request, state: GatewayState) -> tuple[bool, dict[str, Any], str, Optional[Choice]]:
    """(chat?, the request as the gateway forwards it, the model to serve, auto's choice); BadRequest naming the field."""
    try:
        raw = await request.json()
    except RecursionError as exc:
        raise BadRequest(f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels", "invalid_json") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", "invalid_json") from exc
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels", "invalid_json")
    if isinstance(raw, dict) and (refused := [name for name in REFUSED_FIELDS if raw.get(name) not in (None, [], {}, *HARMLESS_VALUES.get(name, ()))]):
        raise BadRequest(f"not supported by slmnet: {', '.join(refused)} (the models are served without tools or constrained output)", "unsupported_parameter")
    wire = REQUEST_MODELS[request.path]
    try:
        parsed = wire.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc), "invalid_fields") from exc
    if parsed.n != 1:
        raise BadRequest("n > 1 is not supported: send n requests", "unsupported_n")
    chat = wire is ChatCompletionRequest
    # Only the fields slmnet knows and has checked go on; the rest (and the user's own tag) stay here.
    # A null is OpenAI's "the default": left out, since engines refuse some (vLLM: ignore_eos).
    body = {k: v for k, v in parsed.model_dump(exclude_unset=True, exclude_none=True, mode="json").items() if k in wire.model_fields and k != "user"}
    if isinstance(parsed, ChatCompletionRequest):
        try:
            body["messages"] = [m.plain(i) for i, m in enumerate(parsed.messages)]
        except ContentNotSupported as exc:
            raise BadRequest(str(exc), "unsupported_content") from exc
    elif not isinstance(body["prompt"], str):
        raise BadRequest("the gateway takes a single string prompt on /v1/completions", "unsupported_prompt")
    elif body.pop("echo", False):  # a miner's echo would be its own copy of the prompt: nothing binds it to what the user sent
        raise BadRequest("echo is not supported by slmnet: prepend the prompt yourself", "unsupported_parameter")
    model, choice = _resolve_model(parsed.model, body, _max_tokens(body, state), state)
    return chat, body, model, choice


def _max_tokens(body: dict[str, Any], state: GatewayState) -> int:
    return body.get("max_completion_tokens") or body.get("max_tokens") or state.settings.default_max_tokens


async def completions(request: web.Request) -> web.StreamResponse:
    state: GatewayState = request.app[STATE]
    started = time.monotonic()
    if request.content_length is not None and request.content_length > state.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the {state.settings.max_body_bytes}-byte limit")
    key = _authenticate(request, state)
    chat, body, model, choice = await _parse(request, state)
    if choice is not None:  # "auto": which model it chose, and for what kind of request, for the user to see
        request["route"] = {MODEL_HEADER: model, ROUTE_HEADER: choice.header()}
    prompt_tokens = state.tokenizers[model].prompt_tokens(messages=body.get("messages"), prompt=body.get("prompt", ""))
    max_tokens = _max_tokens(body, state)
    context = state.contexts.get(model)
    if context is not None and not (body.get("max_completion_tokens") or body.get("max_tokens")):
        max_tokens = max(1, min(max_tokens, context - prompt_tokens))  # a budget nobody asked for: what the context leaves, at most
    if context is not None and prompt_tokens + max_tokens > context:
        raise BadRequest(f"{prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed {model}'s context of {context} tokens", "context_length_exceeded")
    reservation = await state.limits.admit(key, prompt_tokens + max_tokens)
    request["ratelimit"] = reservation.headers
    request_id = request["request_id"]
    state.ledger.open_request(request_id, key.id, model, prompt_tokens)
    generation = Generation(chat=chat, body=body, model=model, max_tokens=max_tokens, prompt_tokens=prompt_tokens, price=key.price)
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
        usage = generation.usage or usage_of(state, generation)
        try:
            await state.limits.settle(reservation, usage["total_tokens"])
        except Exception as exc:  # Redis gone after admission: the ledger keeps the tokens; the shared counter misses them
            log.error("could not settle request %s's quota in the limits store: %s", request_id, exc)
        state.ledger.close_request(request_id, status, usage["completion_tokens"], generation.failovers, parts_of(state, generation))
        state.metrics.tokens.labels("prompt").inc(prompt_tokens)
        state.metrics.tokens.labels("completion").inc(usage["completion_tokens"])
        if status == "ok":
            maybe_sample(state, generation)
            # answer lengths by model and kind, for auto's latency estimates (after the answer: no user waits on it)
            state.router.auto.answered(model, choice.kind if choice else classify(body), usage["completion_tokens"])


def _model_entry(state: GatewayState, model: str, miners: list) -> dict[str, Any]:
    """A model as OpenAI lists it, with what slmnet knows: its context, and live figures from its miners."""
    context = state.contexts.get(model)
    # The most a request can use: the list's context, and the largest any of its miners declares (a miner bounds only itself).
    bounds = [c for c in (context, max((m.max_context for m in miners), default=0)) if c]
    ttfts = sorted(m.ttft for m in miners if m.ttft is not None)
    speeds = sorted(m.tokens_per_s for m in miners if m.tokens_per_s is not None)
    return {
        "id": model,
        "object": "model",
        "created": 0,
        "owned_by": "slmnet",
        "context_length": context,
        "max_completion_tokens": min(bounds) - 1 if bounds else None,
        "miners": len(miners),
        "p50_ttft_s": ttfts[len(ttfts) // 2] if ttfts else None,
        "p50_tokens_per_s": speeds[len(speeds) // 2] if speeds else None,
        "quality": state.router.auto.report(model),
    }


def _auto_entry(flavour: str, miners: int) -> dict[str, Any]:
    return {"id": flavour, "object": "model", "created": 0, "owned_by": "slmnet", "miners": miners, "routes_to": "each request's best model: see the README"}


async def list_models(request: web.Request) -> web.Response:
    state: GatewayState = request.app[STATE]
    _authenticate(request, state)
    served = state.router.models()
    data = [_model_entry(state, model, miners) for model, miners in sorted(served.items())]
    if served:
        data += [_auto_entry(flavour, sum(len(m) for m in served.values())) for flavour in FLAVOURS]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state: GatewayState = request.app[STATE]
    _authenticate(request, state)
    model = request.match_info["model"]
    served = state.router.models()
    if model in FLAVOURS and served:  # every id /v1/models lists answers here
        return web.json_response(_auto_entry(model, sum(len(m) for m in served.values())))
    if model not in state.tokenizers:
        raise ModelNotFound(f"model '{model}' is not served on this subnet; GET /v1/models lists the models")
    return web.json_response(_model_entry(state, model, served.get(model, [])))


PUBLIC_PAGE_S = 1.0  # a public page's body is built at most once a second, however often it is asked


def public_page(build: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
    """A keyless JSON page (the leaderboard, quality, the OpenAPI document) whose body is built at most
    once every ``PUBLIC_PAGE_S`` and served from memory between: a flood of them from anyone costs the
    event loop a dictionary read each, not a walk over every miner, and cannot stall the users' streams."""

    async def handler(request: web.Request) -> web.Response:
        pages = request.app[STATE].pages
        now = time.monotonic()
        built = pages.get(request.path)
        if built is None or now - built[0] > PUBLIC_PAGE_S:
            built = pages[request.path] = (now, json.dumps(await build(request)).encode())
        return web.Response(body=built[1], content_type="application/json")

    return handler


@public_page
async def quality(request: web.Request) -> dict[str, Any]:
    """Per model, in the open: the validators' graded answers by task family (overall and per miner),
    the gateway's live latency, and what each auto flavour picks for each kind of request now."""
    state: GatewayState = request.app[STATE]
    served = state.router.models()
    models = sorted(set(state.tokenizers) | set(served))
    out = []
    for model in models:
        figures = state.router.auto.model(model)
        miners = [m for m in state.router.miners.values() if m.model == model]
        out.append(
            {
                "id": model,
                "served": model in served,
                **state.router.auto.report(model),
                "p50_ttft_s": figures.ttft_s,
                "p50_tokens_per_s": figures.tokens_per_s,
                "answer_tokens": {kind: round(n, 1) for kind, n in sorted(figures.lengths.items())},
                "miners": [
                    {"uid": m.uid, "hotkey": m.hotkey, "families": {q.family: {"answers": q.answers, "correct": q.correct} for q in m.verdict.quality}}
                    for m in sorted(miners, key=lambda m: m.uid)
                    if m.verdict is not None and m.verdict.model == model
                ],
            }
        )
    kinds = sorted(FAMILIES)  # every kind auto tells apart
    paid = state.router.paid(served)
    routes = (
        {flavour: {kind: state.router.auto.choose(flavour, kind, paid, state.settings.default_max_tokens).model for kind in kinds} for flavour in FLAVOURS}
        if served
        else {}
    )
    return {"models": out, "auto": routes}


async def own_key(request: web.Request) -> web.Response:
    """The caller's own key: its limits, what is left of them now, its usage and quota."""
    state: GatewayState = request.app[STATE]
    key = _authenticate(request, state)
    now = time.time()
    await state.ledger.synced()  # this process's requests so far are in the counters read below
    left = await state.limits.window_remaining(key)
    quota_left = await state.limits.remaining_quota(key)
    body = {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "expires": key.expires,
        "limits": {"requests_per_minute": key.rpm, "tokens_per_minute": key.tpm, "quota_tokens": key.quota_tokens, "quota_period_s": key.quota_period},
        "remaining": {"requests_this_minute": left["requests"], "tokens_this_minute": left["tokens"], "quota_tokens": quota_left},
        "quota_resets_at": key.period_end(now),
        "usage": state.store.usage(key.id),
        # The quota's own counter when the key has one; else its totals (a period without a quota: that period's rows)
        "usage_this_period": key.quota_tokens - quota_left if quota_left is not None else state.store.tokens_used(key.id, since=key.period_start(now)),
    }
    return web.json_response(body)


async def health(request: web.Request) -> web.Response:
    state: GatewayState = request.app[STATE]
    served = state.router.models()
    body = {"status": "ok" if served else "no_miners", "models": {m: len(v) for m, v in served.items()}, "hotkey": state.keypair.ss58_address}
    return web.json_response(body, status=200 if served else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus, for a scraper the gateway allows (``shell.role.may_scrape``: loopback, or ``--metrics-token``)."""
    if not may_scrape(request, request.app[STATE].settings.metrics_token):
        raise MetricsRefused("/metrics: scrape from this host, or send the bearer token the gateway was started with (--metrics-token)")
    return web.Response(body=generate_latest(request.app[STATE].metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


@public_page
async def leaderboard(request: web.Request) -> dict[str, Any]:
    """What the dashboard shows: every miner the gateway knows, with its live figures and history."""
    state: GatewayState = request.app[STATE]
    rows = []
    for m in sorted(state.router.miners.values(), key=lambda m: -m.incentive):
        rows.append(
            {
                "uid": m.uid,
                "hotkey": m.hotkey,
                "model": m.model,
                "incentive": m.incentive,
                "healthy": m.healthy,
                "breaker": state.router.breaker(m),
                "ttft_s": m.ttft,
                "tokens_per_s": m.tokens_per_s,
                "requests": m.requests,
                "errors": m.errors,
                "error_rate": m.error_rate,
                "in_flight": m.in_flight,
                "capacity": m.capacity,
                "sampled": m.sampled,
                "verdict": m.verdict.standing if m.verdict is not None else None,
                "history": [{"t": t, "ttft_s": a, "tokens_per_s": b, "error_rate": c} for t, a, b, c in m.history],
            }
        )
    return {"miners": rows, "models": sorted(state.router.models()), "organic_share": state.settings.verify_share}


GATEWAY_OPERATIONS = [
    *openapi.completions((400, 401, 402, 404, 413, 429, 502, 503)),
    openapi.Operation("get", "/v1/models", "The models served now, with their miners' live figures"),
    openapi.Operation("get", "/v1/models/{model}", "One model", errors=(401, 404), path_params=("model",)),
    openapi.Operation("get", "/v1/key", "The caller's own key: limits, what is left, usage"),
    openapi.Operation("get", "/api/quality", "Per model: graded answers by task family, live latency, auto's routes", errors=(), authenticated=False),
    openapi.Operation("get", "/health", "Whether any miner is serving", errors=(503,), authenticated=False),
]


BEARER = {"apiKey": {"type": "http", "scheme": "bearer", "description": "a key from `slmnet keys create`"}}


def openapi_spec(models: list[str]) -> dict[str, Any]:
    """The gateway's OpenAPI document, for a gateway that knows ``models`` (and takes each "auto" flavour)."""
    return openapi.document("slmnet gateway", GATEWAY_OPERATIONS, sorted(models) + list(FLAVOURS), BEARER)


@public_page
async def openapi_document(request: web.Request) -> dict[str, Any]:
    return openapi_spec(list(request.app[STATE].tokenizers))


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _clients_ctx(app: web.Application) -> AsyncIterator[None]:
    """The process's one client session to miners and its per-key limits, for the app's lifetime."""
    state = app[STATE]
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3)
    session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
    state.clients = Clients(session=session, limits=KeyLimits(state.store, state.settings.redis_url), ledger=Ledger(state.store.path))
    # What the process built to start (the SDK, tokenizers, pydantic models: ~4·10⁵ objects) lives as
    # long as it does: kept out of the collector's scans, a full collection under load costs what the
    # requests made since, not the 130 ms a scan of everything took here (every request waits on it).
    gc.freeze()
    yield
    await state.session.close()
    await state.limits.close()
    state.ledger.close()  # every queued write committed before the process ends


def create_app(state: GatewayState) -> web.Application:
    app = web.Application(middlewares=[cors_middleware, errors_middleware], client_max_size=state.settings.max_body_bytes)
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/v1/key", own_key)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/leaderboard", leaderboard)
    app.router.add_get("/api/quality", quality)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/", dashboard)
    handover.add_routes(app)

    app.cleanup_ctx.append(_clients_ctx)
    return app

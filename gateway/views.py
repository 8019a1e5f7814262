"""What the gateway shows: ``/v1/models`` and each model, ``/v1/key``, ``/health``, ``/metrics``, the public pages
(``/api/quality``, ``/api/leaderboard``, ``/openapi.json``: built at most once a second) and the dashboard.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.auto import FLAVOURS
from gateway.errors import MetricsRefused, ModelNotFound
from gateway.parse import authenticate
from gateway.state import STATE, GatewayState
from protocol import openapi
from protocol.families import FAMILIES
from shell.role import may_scrape

STATIC = Path(__file__).with_name("static")


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
    authenticate(request, state)
    served = state.router.models()
    data = [_model_entry(state, model, miners) for model, miners in sorted(served.items())]
    if served:
        data += [_auto_entry(flavour, sum(len(m) for m in served.values())) for flavour in FLAVOURS]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state: GatewayState = request.app[STATE]
    authenticate(request, state)
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
    key = authenticate(request, state)
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

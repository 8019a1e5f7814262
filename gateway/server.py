"""The gateway's HTTP front door: the app, its routes and its clients.

Order of checks: 413 → 401 → 400 → 404 → 429 → 503; every error, ours or unexpected, is one OpenAI error body
(``gateway.middleware``). A completion is validated fully (``gateway.parse``: every field's range, content parts,
nesting depth, the model's context), admitted against the key's limits, then run by ``gateway.relay`` across
miners (``gateway.completions``); what the gateway shows lives in ``gateway.views``.
"""

from __future__ import annotations

import gc
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from gateway import handover
from gateway.completions import completions
from gateway.ledger import Ledger
from gateway.limits import KeyLimits
from gateway.middleware import cors_middleware, errors_middleware
from gateway.state import STATE, Clients, GatewayState
from gateway.views import dashboard, get_model, health, leaderboard, list_models, metrics, openapi_document, own_key, quality


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

"""What wraps every route: request ids and one OpenAI error body for every error, ours or unexpected; CORS for the
browser origins the operator allows, preflights answered before routing.
"""

from __future__ import annotations

import logging
from typing import Callable

from aiohttp import web

from gateway.errors import HttpError, PayloadTooLarge
from gateway.state import CLIENT_ID, ENTROPY, STATE, GatewayState, request_headers
from protocol.errors import error_body, http_layer_refusal, internal_error

log = logging.getLogger(__name__)


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

"""Errors of the miner, each with the HTTP status and error code a caller receives.

protocol.errors.HttpError    one request refused (BadRequest 400, ModelNotFound 404, PayloadTooLarge 413 are shared)
├── Unauthorized             401 missing, forged, stale, replayed or misaddressed btauth/1
├── Forbidden                403 a valid signature from a hotkey that may not call this miner
├── Overloaded               429 over the per-caller or global in-flight limit (Retry-After)
└── EngineUnavailable        503 the vLLM engine is down or starting

A miner that cannot start raises ``shell.StartupError`` (hotkey not registered, engine mismatch).
"""

from __future__ import annotations

from protocol.errors import BadRequest, HttpError, ModelNotFound, PayloadTooLarge

__all__ = [
    "BadRequest",
    "EngineUnavailable",
    "Forbidden",
    "HttpError",
    "ModelNotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Unauthorized",
]


class Unauthorized(HttpError):
    status, type, code = 401, "authentication_error", "unauthenticated"


class Forbidden(HttpError):
    status, type, code = 403, "permission_error", "forbidden"


class Overloaded(HttpError):
    status, type, code = 429, "rate_limit_error", "overloaded"


class EngineUnavailable(HttpError):
    status, type, code = 503, "server_error", "engine_unavailable"

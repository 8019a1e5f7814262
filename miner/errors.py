"""Errors of the miner, each with the HTTP status and error code a caller receives.

protocol.errors.HttpError    one request refused (BadRequest 400, Unauthorized 401 — a btauth/1 signature missing,
│                            forged, stale, replayed or misaddressed —, Forbidden 403, ModelNotFound 404,
│                            PayloadTooLarge 413 are every role's)
├── Overloaded               429 over the per-caller or global in-flight limit (Retry-After)
└── EngineUnavailable        503 the vLLM engine is down or starting

A miner that cannot start raises ``shell.StartupError`` (hotkey not registered, engine mismatch).
"""

from __future__ import annotations

from protocol.errors import BadRequest, Forbidden, HttpError, ModelNotFound, PayloadTooLarge, Unauthorized

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


class Overloaded(HttpError):
    status, type, code = 429, "rate_limit_error", "overloaded"


class EngineUnavailable(HttpError):
    status, type, code = 503, "server_error", "engine_unavailable"

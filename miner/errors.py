"""Errors of the miner, each with the HTTP status and error code a caller receives.

MinerError
├── HttpError                one request refused; ``status`` and ``code`` go on the wire
│   ├── BadRequest           400 malformed JSON or fields
│   ├── Unauthorized         401 missing, forged, stale, replayed or misaddressed btauth/1
│   ├── Forbidden            403 a valid signature from a hotkey that may not call this miner
│   ├── ModelNotFound        404 a model other than the served one
│   ├── PayloadTooLarge      413 a body over the size limit
│   ├── Overloaded           429 over the per-caller or global in-flight limit (Retry-After)
│   └── EngineUnavailable    503 the vLLM engine is down or starting
└── StartupError             the miner cannot start (hotkey not registered, engine mismatch)
"""

from __future__ import annotations


class MinerError(Exception):
    """Base of every error the miner raises."""


class HttpError(MinerError):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(HttpError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(HttpError):
    status, type, code = 401, "authentication_error", "unauthenticated"


class Forbidden(HttpError):
    status, type, code = 403, "permission_error", "forbidden"


class ModelNotFound(HttpError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class PayloadTooLarge(HttpError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class Overloaded(HttpError):
    status, type, code = 429, "rate_limit_error", "overloaded"


class EngineUnavailable(HttpError):
    status, type, code = 503, "server_error", "engine_unavailable"


class StartupError(MinerError):
    """The miner cannot start; the message says what to do."""

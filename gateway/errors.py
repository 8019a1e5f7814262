"""Errors of the gateway, each with the HTTP status and code its callers receive.

The request-level ones share ``protocol.errors.HttpError`` (the same OpenAI error body as the miner's):

HttpError
├── BadRequest, ModelNotFound, PayloadTooLarge    (shared: 400, 404, 413)
├── InvalidApiKey       401 missing, unknown or revoked key
├── MetricsRefused      403 /metrics from elsewhere than this host without the metrics token
├── KeyRateLimited      429 over requests or tokens per minute (Retry-After)
├── QuotaExceeded       402 the key's token quota is used up (not retryable: it refills only with its period)
├── NoMinerAvailable    503 no healthy miner serves the model right now (Retry-After)
├── LimitsUnavailable   503 the shared rate-limit store (Redis) does not answer: fail closed (Retry-After)
└── UpstreamFailed      502 every miner tried failed before the first token
"""

from __future__ import annotations

from protocol.errors import BadRequest, HttpError, ModelNotFound, PayloadTooLarge

__all__ = [
    "BadRequest",
    "HttpError",
    "InvalidApiKey",
    "LimitsUnavailable",
    "MetricsRefused",
    "ModelNotFound",
    "NoMinerAvailable",
    "PayloadTooLarge",
    "QuotaExceeded",
    "KeyRateLimited",
    "UpstreamFailed",
]


class InvalidApiKey(HttpError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class MetricsRefused(HttpError):
    status, type, code = 403, "permission_error", "metrics_not_allowed"


class KeyRateLimited(HttpError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class QuotaExceeded(HttpError):
    status, type, code = 402, "insufficient_quota", "insufficient_quota"


class LimitsUnavailable(HttpError):
    status, type, code = 503, "server_error", "limits_unavailable"


class NoMinerAvailable(HttpError):
    status, type, code = 503, "server_error", "no_miner_available"


class UpstreamFailed(HttpError):
    status, type, code = 502, "server_error", "upstream_failed"

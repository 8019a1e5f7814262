"""HTTP errors every slmnet server answers with, and the one OpenAI error body they all use.

HttpError                   one request refused; ``status``, ``type`` and ``code`` go on the wire
├── BadRequest              400 malformed JSON or fields
├── Unauthorized            401 a btauth/1 signature missing, forged, stale, replayed or misaddressed (``code`` says which)
├── Forbidden               403 a valid signature from a hotkey that may not make this call
├── ModelNotFound           404 a model that is not served here
└── PayloadTooLarge         413 a body over the size limit

Each role adds its own (``miner/errors.py``, ``gateway/errors.py``) on this base, so one
middleware per server turns any of them into the same body.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

from aiohttp import web
from pydantic import BaseModel


class ErrorObject(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Union[str, int, None] = None


class ErrorBody(BaseModel):
    """The OpenAI error body, as the OpenAPI documents describe it (``protocol.openapi``)."""

    error: ErrorObject


def error_body(message: str, type_: str, code: Union[str, int, None] = None, param: Optional[str] = None) -> dict[str, Any]:
    """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def internal_error(log: logging.Logger, server: str, request: web.Request, request_id: str) -> web.Response:
    """The 500 for an exception no handler expected: logged with its traceback, the caller given the request id."""
    log.exception("unexpected error on %s %s (request %s)", request.method, request.path, request_id)
    return web.json_response(error_body(f"internal error in the {server}; quote request id {request_id}", "server_error", "internal_error"), status=500)


def http_layer_refusal(exc: web.HTTPException) -> web.Response:
    """A refusal aiohttp makes itself (an unknown path 404, a wrong method 405…) as an OpenAI error body."""
    code = {404: "unknown_path", 405: "method_not_allowed"}.get(exc.status, f"http_{exc.status}")
    allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
    return web.json_response(error_body(exc.reason, "invalid_request_error", code), status=exc.status, headers=allow)


class HttpError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code)


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

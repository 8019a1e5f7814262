"""The OpenAPI 3.1 documents the gateway and the miner serve at ``GET /openapi.json``.

Request bodies are the JSON schemas of the wire models in ``protocol.openai``, so the
document cannot drift from what the servers validate; each server narrows ``model`` to
what it serves. Every error is the one OpenAI error body (``protocol.errors.ErrorBody``).
Clients and fuzzers (``tests/integration/test_fuzz.py``, schemathesis) read it from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from protocol.errors import ErrorBody
from protocol.openai import ChatCompletionRequest, CompletionRequest
from protocol.version import __version__

REF = "#/components/schemas/{model}"
# What each error status means on every slmnet server (a role documents those it answers).
ERRORS = {
    400: "malformed JSON or a field out of range",
    401: "no valid credentials",
    402: "the key's token quota is spent",
    403: "credentials valid, but not allowed to call this",
    404: "unknown model",
    413: "body over the size limit",
    429: "over a limit; Retry-After says when to retry",
    502: "every miner asked failed; nothing was charged",
    503: "nothing can answer right now; Retry-After says when to retry",
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    body: Optional[type[BaseModel]] = None
    errors: tuple[int, ...] = (401,)
    authenticated: bool = True
    streams: bool = False  # 200 may be text/event-stream (``"stream": true``)
    path_params: tuple[str, ...] = field(default=())


def completions(errors: tuple[int, ...]) -> list[Operation]:
    """The two completion routes, with the errors the role answers on them."""
    return [
        Operation("post", "/v1/chat/completions", "A chat completion, whole or streamed", ChatCompletionRequest, errors, streams=True),
        Operation("post", "/v1/completions", "A text completion, whole or streamed", CompletionRequest, errors, streams=True),
    ]


def document(title: str, operations: list[Operation], models: list[str], security: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI document of ``operations``, the request bodies' ``model`` an enum of ``models``."""
    wire = sorted({op.body for op in operations if op.body is not None} | {ErrorBody}, key=lambda m: m.__name__)
    _, schemas = models_json_schema([(m, "validation") for m in wire], ref_template=REF)
    components = schemas.get("$defs", {})
    for model in wire:
        if model is not ErrorBody:
            components[model.__name__]["properties"]["model"] = {"type": "string", "enum": models, "description": "A model this server serves"}
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        ok: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
        if op.streams:
            ok["text/event-stream"] = {"schema": {"type": "string"}}
        spec: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": {"200": {"description": "OK", "content": ok}} | {str(s): {"description": ERRORS[s], **error} for s in op.errors},
            "security": [{name: [] for name in security}] if op.authenticated else [],
        }
        if op.body is not None:
            spec["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(model=op.body.__name__)}}}}
        if op.path_params:
            spec["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}} for p in op.path_params]
        paths.setdefault(op.path, {})[op.method] = spec
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": security},
    }

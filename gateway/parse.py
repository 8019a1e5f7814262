"""A user's request read the gateway's way: the key checked, the body validated field by field (its JSON depth,
the fields that change what an answer is refused, the harmless values of them dropped), the model resolved (``auto``
picks one per request), the budget set.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import msgspec
from aiohttp import web
from pydantic import ValidationError

from gateway.auto import FLAVOURS, Choice, classify
from gateway.errors import BadRequest, InvalidApiKey, ModelNotFound, NoMinerAvailable
from gateway.state import GatewayState
from protocol import tools
from protocol.openai import REQUEST_MODELS, ChatCompletionRequest, ContentNotSupported, describe_validation_error, json_depth

MAX_JSON_DEPTH = 32
# OpenAI fields that change what an answer is: dropping them would answer another question, so they are refused
# where the request's wire model does not take them (chat completions take ``response_format``, a grammar the
# miner's engine decodes under and the validator verifies under, and tools: ``protocol.tools``). Others the
# gateway does not know (metadata, store, service_tier, user, …) are dropped: they never reach a miner.
REFUSED_FIELDS = (
    "tools",
    "tool_choice",
    "functions",  # OpenAI's deprecated spelling of tools
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


def authenticate(request: web.Request, state: GatewayState):
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


async def parse_request(request: web.Request, state: GatewayState) -> tuple[bool, dict[str, Any], str, Optional[Choice]]:
    """(chat?, the request as the gateway forwards it, the model to serve, auto's choice); BadRequest naming the field."""
    try:
        # Strict JSON, compiled: a lone surrogate escape (no text a tokenizer can read), NaN and numbers out of range are refused here.
        raw = msgspec.json.decode(await request.read())
    except RecursionError as exc:
        raise BadRequest(f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels", "invalid_json") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", "invalid_json") from exc
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body nests JSON deeper than {MAX_JSON_DEPTH} levels", "invalid_json")
    wire = REQUEST_MODELS[request.path]
    if isinstance(raw, dict) and (
        refused := [name for name in REFUSED_FIELDS if name not in wire.model_fields and raw.get(name) not in (None, [], {}, *HARMLESS_VALUES.get(name, ()))]
    ):
        raise BadRequest(f"not supported by slmnet on {request.path}: {', '.join(refused)}", "unsupported_parameter")
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
    if body.get("response_format") in HARMLESS_VALUES["response_format"]:
        del body["response_format"]  # free text: what the models write anyway
    if isinstance(parsed, ChatCompletionRequest):
        try:
            messages = [m.plain(i) for i, m in enumerate(parsed.messages)]
        except ContentNotSupported as exc:
            raise BadRequest(str(exc), "unsupported_content") from exc
        try:
            body["messages"], tool_grammar = tools.render(messages, body.get("tools") or [], body.get("tool_choice"))
        except ValueError as exc:
            raise BadRequest(str(exc), "invalid_tools") from exc
        if tool_grammar is not None:
            body["response_format"] = tool_grammar
    elif not isinstance(body["prompt"], str):
        raise BadRequest("the gateway takes a single string prompt on /v1/completions", "unsupported_prompt")
    elif body.pop("echo", False):  # a miner's echo would be its own copy of the prompt: nothing binds it to what the user sent
        raise BadRequest("echo is not supported by slmnet: prepend the prompt yourself", "unsupported_parameter")
    model, choice = _resolve_model(parsed.model, body, max_tokens_of(body, state), state)
    return chat, body, model, choice


def max_tokens_of(body: dict[str, Any], state: GatewayState) -> int:
    return body.get("max_completion_tokens") or body.get("max_tokens") or state.settings.default_max_tokens

"""``POST /v1/chat/completions`` and ``/v1/completions``: a request checked (``gateway.parse``), admitted against the
key's limits, counted in the ledger, and run across miners by ``gateway.relay``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from gateway.answer import Generation
from gateway.auto import classify
from gateway.errors import BadRequest, KeyRateLimited, PayloadTooLarge
from gateway.parse import authenticate, max_tokens_of, parse_request
from gateway.relay import ClientGone, Relay, maybe_sample, parts_of, usage_of
from gateway.state import MODEL_HEADER, ROUTE_HEADER, STATE, GatewayState
from models.tokenizer import PromptTokens

log = logging.getLogger(__name__)


async def completions(request: web.Request) -> web.StreamResponse:
    state: GatewayState = request.app[STATE]
    started = time.monotonic()
    if request.content_length is not None and request.content_length > state.settings.max_body_bytes:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes is over the {state.settings.max_body_bytes}-byte limit")
    key = authenticate(request, state)
    chat, body, model, choice = await parse_request(request, state)
    if choice is not None:  # "auto": which model it chose, and for what kind of request, for the user to see
        request["route"] = {MODEL_HEADER: model, ROUTE_HEADER: choice.header()}
    tokenizer = state.tokenizers[model]
    prompt = PromptTokens(tokenizer, tokenizer.render(messages=body.get("messages"), prompt=body.get("prompt", "")))
    max_tokens = max_tokens_of(body, state)
    context = state.contexts.get(model)
    if context is not None and prompt.tokens + max_tokens > context:
        prompt.count()  # the checks below pass on the bound, else the count decides
        if not (body.get("max_completion_tokens") or body.get("max_tokens")):
            max_tokens = max(1, min(max_tokens, context - prompt.tokens))  # a budget nobody asked for: what the context leaves, at most
        if prompt.tokens + max_tokens > context:
            raise BadRequest(f"{prompt.tokens} prompt tokens + max_tokens {max_tokens} exceed {model}'s context of {context} tokens", "context_length_exceeded")
    if key.quota_tokens is not None:
        prompt.count()  # a quota reserves what a request may use while it runs: on a bound it would hold others out
    try:
        reservation = await state.limits.admit(key, prompt.tokens + max_tokens)
    except KeyRateLimited as exc:
        if prompt.counted or exc.code != "rate_limit_tokens":
            raise  # a request over the key's requests a minute is refused whatever its tokens: no count, no second ask
        prompt.count()  # refused on the bound: the count decides
        reservation = await state.limits.admit(key, prompt.tokens + max_tokens)
    charged = prompt.tokens  # the prompt's tokens as admission charged them: the bound, or the count
    request["ratelimit"] = reservation.headers
    request_id = request["request_id"]
    generation = Generation(chat=chat, body=body, model=model, max_tokens=max_tokens, prompt_tokens=prompt.tokens, price=key.price)
    # The prompt's count, the request's open row and the overhead figure are made at the handler's first wait (the first
    # miner's answer), not before it is asked: that time is the user's. A request that ends before any wait (no miner
    # could take it) has them made in ``finally``: the open row always goes before the close.
    opened = False

    def open_row() -> None:
        nonlocal opened
        if not opened:
            opened = True
            generation.prompt_tokens = prompt.count()
            state.ledger.open_request(request_id, key.id, model, generation.prompt_tokens)

    loop = asyncio.get_running_loop()
    loop.call_soon(open_row)
    overhead_ms = (time.monotonic() - started) * 1000  # everything before the first miner is asked
    loop.call_soon(state.metrics.overhead.observe, overhead_ms / 1000)
    status = "failed"
    relay = Relay(request, state, generation, overhead_ms)
    try:
        response = await relay.run()
        status = "ok" if generation.finish_reason else "cut"
        return response
    except (ClientGone, asyncio.CancelledError) as exc:
        # The user hung up: the upstream request was closed with the stream; the tokens so far are charged.
        status = "cancelled"
        log.info("client went away on request %s after %s characters", request_id, len(generation.text))
        if isinstance(exc, asyncio.CancelledError):
            raise
        return relay.response or web.Response(status=499)
    finally:
        open_row()
        usage = generation.usage or usage_of(state, generation)
        try:
            await state.limits.settle(reservation, usage["total_tokens"], overcharged=charged - generation.prompt_tokens)
        except Exception as exc:  # Redis gone after admission: the ledger keeps the tokens; the shared counter misses them
            log.error("could not settle request %s's quota in the limits store: %s", request_id, exc)
        state.ledger.close_request(request_id, status, usage["completion_tokens"], generation.failovers, parts_of(state, generation))
        state.metrics.tokens.labels("prompt").inc(generation.prompt_tokens)
        state.metrics.tokens.labels("completion").inc(usage["completion_tokens"])
        if status == "ok":
            maybe_sample(state, generation)
            # answer lengths by model and kind, for auto's latency estimates (after the answer: no user waits on it)
            state.router.auto.answered(model, choice.kind if choice else classify(body), usage["completion_tokens"])

"""One request's answer, built across miners: failover before and after the first token, and the user's response.

The HTTP status is held until the first token (a stream that waits longer than
``keepalive_s`` starts with 200 and SSE comments instead, which keep proxies from closing
it; after that a failure ends it in-band): a miner that fails before it is replaced
by the next candidate of the order the router drew, up to ``max_attempts``. A miner that
dies, stalls or breaks the protocol after tokens went out is replaced too: the next miner
serving the same model continues the same generation from the text already sent (an
assistant prefix with ``continue_final_message``; the text prompt plus that text for
``/v1/completions``), with the tokens left of ``max_tokens``, and the user's stream goes
on without a break. When no miner can continue, the stream ends with ``finish_reason``
``"error"``, an OpenAI error event and no ``[DONE]``. Each chunk's text is bound to its
token ids before the user sees it; the user's chunks are rebuilt from the validated
models (``gateway.answer.user_chunk``, ``whole_completion``), so nothing a miner adds reaches the user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Optional, Union

import aiohttp
import msgspec
from aiohttp import web

from gateway.answer import Generation, Head, chat_logprobs, error_chunk, text_logprobs, usage_chunk, user_chunk, whole_as_chunks, whole_completion
from gateway.errors import BadRequest, NoMinerAvailable, UpstreamFailed
from gateway.router import MinerView
from gateway.state import MINER_HEADER, OVERHEAD_HEADER, GatewayState, request_headers
from gateway.upstream import MinerFailed, miner_events
from models.tokenizer import ModelTokenizer, TextBinding
from protocol.errors import error_body
from protocol.records import AnswerRecord
from protocol.responses import ChatChunkChoice, Chunk, StreamFold, TextChunkChoice
from protocol.sse import SSE_HEADERS, StreamViolation

ENCODE = msgspec.json.Encoder().encode  # the user's chunks and answers: compiled, ~15× json.dumps on a chunk
log = logging.getLogger(__name__)

BUSY_RETRY_S = 0.25
PROGRESS_INTERVAL_S = 1.0  # how often the ledger learns the tokens streamed so far


class ClientGone(Exception):
    """The user hung up: the request ends, the upstream request with it; nobody's failure."""


class Relay:
    """Runs one request across miners and writes the user's answer (streamed or whole)."""

    def __init__(self, request: web.Request, state: GatewayState, generation: Generation, overhead_ms: float):
        self.request, self.state, self.gen = request, state, generation
        self.overhead_ms = overhead_ms  # sent as OVERHEAD_HEADER
        self.user_stream = bool(generation.body.get("stream")) and not generation.calls_tools  # a tool answer is read whole
        self.response: Optional[web.StreamResponse] = None
        self.head = Head(("chatcmpl-" if generation.chat else "cmpl-") + request["request_id"], int(time.time()), generation)
        self.last_progress = time.monotonic()
        self.first_token = False  # a token reached the user's answer (or it ended): keep-alives stop
        self.keepalive: Optional[Union[asyncio.TimerHandle, asyncio.Future]] = None  # the next keep-alive's timer, or its write

    def _headers(self) -> dict[str, str]:
        headers = {**request_headers(self.request), OVERHEAD_HEADER: f"{self.overhead_ms:.3f}"}
        if self.gen.parts:
            headers[MINER_HEADER] = ",".join(str(part[0]) for part in self.gen.parts)  # the miners that answered, in turn
        return headers

    async def _start_stream(self) -> web.StreamResponse:
        self.response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **self._headers()})
        try:
            await self.response.prepare(self.request)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGone() from exc
        return self.response

    async def _stream(self) -> web.StreamResponse:
        """The user's stream, started if it is not yet."""
        return self.response if self.response is not None else await self._start_stream()

    async def _write(self, events: list[dict[str, Any]], raw: bytes = b"", last: bool = False) -> None:
        """``events`` as SSE, then ``raw``, in one write (``last``: with the stream's end)."""
        frames = [b"data: " + ENCODE(event) + b"\n\n" for event in events]
        stream = await self._stream()
        try:
            await (stream.write_eof if last else stream.write)(b"".join(frames) + raw)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGone() from exc

    def _absorb(self, chunk: Chunk, binding: TextBinding, tokenizer: ModelTokenizer) -> None:
        for choice in chunk.choices:
            piece = choice.delta.content if isinstance(choice, ChatChunkChoice) else choice.text
            binding.feed(choice.token_ids or [], piece)  # StreamViolation: the user must not read text its ids do not spell
            self.gen.text += piece or ""
            ids = choice.token_ids or []
            self.gen.token_ids += ids
            self.gen.upstream_tokens += len(ids) if ids else (1 if piece else 0)
            asked = self.gen.body.get("logprobs")
            if not self.user_stream and choice.logprobs is not None:  # a whole answer's, for a user who asked (a stream's: user_chunk)
                if asked and isinstance(choice, ChatChunkChoice):
                    self.gen.logprobs += chat_logprobs(choice, tokenizer)  # StreamViolation: a token not named by its id
                elif asked is not None and isinstance(choice, TextChunkChoice):
                    self.gen.logprobs.append(text_logprobs(choice, choice.logprobs, tokenizer, self.gen.parts[-1][2]))
            if choice.finish_reason:
                self.gen.finish_reason = choice.finish_reason

    async def _from(self, miner: MinerView) -> None:
        """Stream ``miner``'s answer into the user's; MinerFailed and ClientGone escape."""
        continuing = bool(self.gen.parts) and bool(self.gen.text)
        body = self.gen.upstream_body()
        fold = StreamFold(chat=self.gen.chat, max_tokens=body["max_tokens"], logprobs=body.get("logprobs") not in (None, False))
        sent = time.monotonic()
        first_token_at = None
        tokens_before = self.gen.upstream_tokens
        self.gen.parts.append([miner.uid, miner.hotkey, len(self.gen.text), self.gen.upstream_tokens])
        tokenizer = self.state.tokenizers[self.gen.model]
        binding = TextBinding(tokenizer)
        async with contextlib.aclosing(miner_events(self.state, miner, body, fold, lambda: first_token_at is not None)) as batches:
            async for batch in batches:
                # The user's chunks of a batch go out in one write, the chunks before a bad one included:
                # the user must have read all the text the next miner continues from.
                events, violation = [], None
                for chunk in batch:
                    try:
                        self._absorb(chunk, binding, tokenizer)
                    except StreamViolation as exc:
                        violation = exc
                        break
                    if first_token_at is None and self.gen.upstream_tokens > tokens_before:
                        first_token_at = time.monotonic()
                        self.first_token = True
                        self.state.metrics.ttft.labels(str(miner.uid)).observe(first_token_at - sent)
                    # (before the first token a stream has not started: nothing to show yet)
                    if self.user_stream and (self.response is not None or first_token_at is not None):
                        try:
                            user_event = user_chunk(self.head, chunk, continuing, tokenizer)
                        except StreamViolation as exc:
                            violation = exc
                            break
                        if user_event is not None:
                            events.append(user_event)
                if self.user_stream and first_token_at is not None and self.response is None:
                    await self._start_stream()
                if events:
                    await self._write(events)
                if violation is not None:
                    raise MinerFailed("violation", violation.reason) from violation
                if time.monotonic() - self.last_progress > PROGRESS_INTERVAL_S:
                    self.last_progress = time.monotonic()
                    self.state.ledger.progress(self.request["request_id"], completion_tokens(self.gen))
        if self.gen.calls_tools and self.gen.finish_reason is not None:
            try:  # the gateway reads a tool answer to build the user's message: checked here, where a miner's text enters
                self.gen.message = self.gen.tool_message()
            except ValueError as exc:
                self.gen.finish_reason = None  # no answer: the next miner is asked afresh
                raise MinerFailed("violation", str(exc)) from exc
        self.gen.finished_part = (body, fold)
        elapsed = time.monotonic() - sent
        produced = self.gen.upstream_tokens - tokens_before
        self.state.router.succeeded(miner, first_token_at - sent if first_token_at else None, produced / elapsed if produced and elapsed > 0 else None)

    def _keepalive_due(self) -> None:
        """While a stream waits for its first token, an SSE comment every ``keepalive_s``: proxies and
        clients with idle timeouts keep the connection. Once it is sent the status is 200: a failure
        after it ends the stream with finish_reason "error" and an error event. A timer, not a task: a
        request answered within the interval (nearly all) costs one timer handle."""
        if not self.first_token:
            self.keepalive = asyncio.ensure_future(self._send_keepalive())

    async def _send_keepalive(self) -> None:
        try:
            await (await self._stream()).write(b": keep-alive\n\n")
        except (ClientGone, ConnectionResetError, aiohttp.ClientConnectionResetError):
            return  # the relay finds out at its next write
        if not self.first_token:
            self.keepalive = asyncio.get_running_loop().call_later(self.state.settings.keepalive_s, self._keepalive_due)

    async def run(self) -> web.StreamResponse:
        if self.user_stream and self.state.settings.keepalive_s > 0:
            self.keepalive = asyncio.get_running_loop().call_later(self.state.settings.keepalive_s, self._keepalive_due)
        try:
            return await self._run()
        finally:
            if self.keepalive is not None:
                self.keepalive.cancel()

    async def _run(self) -> web.StreamResponse:
        tried: set[int] = set()
        failures: list[tuple[str, bool]] = []  # (what happened, whether it was only a full miner)
        busy_until = time.monotonic() + self.state.settings.busy_wait
        attempts = 0  # miners that took the request (a 429 is not an attempt)
        refusals = 0  # 429s met: the first counts against its miner
        refused_request: list[MinerView] = []  # miners that refused the request itself (a 4xx, an error event) before any token
        order: list[MinerView] = []  # the router's order, drawn once and walked: a retry goes to the next best, not to a new draw
        while attempts < self.state.settings.max_attempts and self.gen.finish_reason is None:
            if not order:
                order = [m for m in self.state.router.candidates(self.gen.model) if m.uid not in tried]
            if not order and all(busy for _, busy in failures) and time.monotonic() < busy_until and self.state.router.models().get(self.gen.model):
                # Every miner is at its limit (here or by its own 429): wait for a free slot rather than fail the user.
                await asyncio.sleep(BUSY_RETRY_S)
                tried.clear()
                failures.clear()
                continue
            if not order:
                break
            miner = order.pop(0)
            trial = self.state.router.take(miner)
            if trial is None:
                continue  # its breaker opened, or it filled up, since the order was drawn
            tried.add(miner.uid)
            produced = self.gen.mark()
            try:
                await self._from(miner)
            except MinerFailed as exc:
                if self.gen.text and not self.gen.continuable and self.response is None:
                    self.gen.restart()  # a grammar's answer another miner cannot continue, unseen yet: asked afresh
                if not self.gen.text:
                    self.gen.rewind(produced)  # nothing reached the user: the next miner starts afresh, with every token
                # What the miner said goes to the log only: users never read a miner's own words.
                failures.append((f"uid {miner.uid}: {exc.what}", exc.busy))
                if exc.busy:  # full, it says: nothing was produced; the validator weighs the refusal (we had it under its capacity)
                    self.gen.parts.pop()
                    if not refusals:  # a request walking several full miners counts once: a user's flood is not each miner's refusal
                        self.state.ledger.count_service(miner.hotkey, "refused")
                    refusals += 1
                    continue
                attempts += 1
                log.warning(
                    "miner uid %s failed on request %s (%s); %s",
                    miner.uid,
                    self.request["request_id"],
                    exc,
                    "continuing on another" if self.gen.text else "retrying",
                )
                self.state.metrics.miner_errors.labels(str(miner.uid), exc.kind).inc()
                if exc.refused_request and not self.gen.text:
                    refused_request.append(miner)  # the request's fault or the miner's: known once every miner that tries it has
                else:
                    self._failed(miner)
                if self.gen.upstream_tokens >= self.gen.max_tokens:
                    self.gen.finish_reason = "length"  # it failed after the last token it was owed: the answer is whole
                    break
                if self.gen.text and not self.gen.continuable:
                    break  # a grammar's streamed answer the user has begun to read: no miner can continue it
                if self.gen.text:
                    self.gen.failovers += 1
                self.state.metrics.failovers.labels("mid_stream" if self.gen.text else "before_first_token").inc()
            else:
                attempts += 1
            finally:
                self.state.router.release(miner, trial)
        # Refused as malformed by every miner that tried it, the request is at fault (the user's 400), not they: no
        # breaker moves and no failure is counted, so a user cannot grief honest miners with requests their engines
        # refuse. Answered or failed otherwise by another, each miner that refused it failed it.
        user_fault = bool(refused_request) and len(refused_request) == attempts and self.gen.finish_reason is None
        for miner in refused_request if not user_fault else ():
            self._failed(miner)
        if self.gen.finish_reason is None:
            return await self._fail(failures, user_fault)
        return await self._finish()

    def _failed(self, miner: MinerView) -> None:
        """A miner failed this request: its breaker and the service counts validators read know it."""
        self.state.router.failed(miner)
        self.state.ledger.count_service(miner.hotkey, "failed")

    async def _fail(self, failures: list[tuple[str, bool]], user_fault: bool = False) -> web.StreamResponse:
        """``user_fault``: every miner that tried the request refused it (``MinerFailed.refused_request``): the user's 400."""
        self.first_token = True  # no keep-alive from here on
        detail = "; ".join(what for what, _ in failures) or "no miner could take the request"
        if self.response is None:
            if user_fault:
                raise BadRequest(f"every miner that tried this request refused it ({detail}): check its fields against the model")
            if all(busy for _, busy in failures):
                raise NoMinerAvailable(f"every miner serving '{self.gen.model}' is busy or down; retry shortly", headers={"Retry-After": "2"})
            raise UpstreamFailed(f"no miner could answer ({detail})")
        # The OpenAI stream convention for a failed answer: a last chunk with finish_reason "error", then the error event.
        await self._write(
            [error_chunk(self.head), error_body(f"the answer was cut: no miner could continue it ({detail})", "server_error", "upstream_failed")], last=True
        )
        return self.response

    async def _finish(self) -> web.StreamResponse:
        self.first_token = True
        usage = self.gen.usage = usage_of(self.state, self.gen)
        if self.user_stream:
            stream = await self._stream()  # started here when it finished without a single token
            final = [usage_chunk(self.head, usage)] if (self.gen.body.get("stream_options") or {}).get("include_usage") else []
            await self._write(final, b"data: [DONE]\n\n", last=True)
            return stream
        payload = whole_completion(self.head, usage)
        if self.gen.body.get("stream"):  # a tool answer a user streams: the whole message as stream chunks
            stream = await self._stream()
            final = [usage_chunk(self.head, usage)] if (self.gen.body.get("stream_options") or {}).get("include_usage") else []
            await self._write([*whole_as_chunks(self.head, payload), *final], b"data: [DONE]\n\n", last=True)
            return stream
        # Written here, before the request's books are closed (completions' finally): the user's answer does not wait on them.
        response = web.Response(body=ENCODE(payload), content_type="application/json", headers=self._headers())
        try:
            await response.prepare(self.request)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGone() from exc
        return response


def maybe_sample(state: GatewayState, generation: Generation) -> None:
    """Put a sampled share of chat answers in the organic outbox, for a validator to verify like a challenge:
    the part of the miner that finished each, with the request it was sent — the user's, or, after a
    failover mid-stream, the continuation of what the miners before it wrote (a conversation ending in
    that partial assistant turn, which the reference renders the same way). Text completions too: the
    reference tokenizes their prompt as the miner's engine does."""
    if not (generation.finished_part is not None and generation.parts and state.settings.verify_share):
        return
    request, answer = generation.finished_part
    miner = state.router.miners.get(generation.parts[-1][0])
    if miner is None or state.rng.random() >= state.router.verify_share(miner, state.settings.verify_share):
        return
    # A continuation is no user's prompt to replay; a whole answer's request is the user's own.
    replayable = state.settings.replay_prompts and not request.get("continue_final_message")
    state.ledger.record_sample(miner.uid, miner.hotkey, generation.model, request, AnswerRecord.from_fold(answer), replayable=replayable)
    miner.sampled += 1


def completion_tokens(generation: Generation) -> int:
    """The answer's tokens: its token ids, each bound to the text it spells with the model's
    tokenizer before the user saw it (never the miner's own count), at most ``max_tokens`` —
    so a request is never charged more than it reserved. (Re-tokenizing the text would not
    do: text does not tokenize back to the ids that made it, and can count more.)"""
    return min(generation.upstream_tokens, generation.max_tokens)


def usage_of(state: GatewayState, generation: Generation) -> dict[str, Any]:
    """OpenAI's usage: the counts, their details where known (no prompt token is billed as cached, and these models
    reason in the open: no hidden reasoning tokens), and what the answer cost under the key's price, if it has one."""
    completion = completion_tokens(generation)
    total = generation.prompt_tokens + completion
    usage: dict[str, Any] = {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    if generation.price is not None:
        usage["cost"] = round(total * generation.price / 1e6, 10)
    return usage


def parts_of(state: GatewayState, generation: Generation) -> list[tuple[int, str, int]]:
    """Completion tokens per miner that produced part of the answer."""
    parts = []
    for index, (uid, hotkey, _, start) in enumerate(generation.parts):
        end = generation.parts[index + 1][3] if index + 1 < len(generation.parts) else completion_tokens(generation)
        parts.append((uid, hotkey, max(0, min(end, generation.max_tokens) - start)))
    return [p for p in parts if p[2] or p == parts[-1]]

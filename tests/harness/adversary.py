"""Adversarial miners for tests: a tampering engine a real `slmnet miner` attaches to.

Not a mock of anything: a cheating miner controls its engine, so the cheat lives
between the real miner process and a real vLLM engine. This proxy forwards every
request to ``--upstream`` and, for streamed chat completions, tampers as its ``--mode``
says; a real miner started with ``--engine-url`` pointing here then serves the tampered
answers under its declared model, signed and on the localnet like any other.

Modes: ``invent-logprobs`` (plausible-looking logprobs instead of the model's),
``cut`` (stops after a third of ``max_tokens`` and calls it ``stop``), ``burst``
(buffers the whole answer, then sends it at once), ``over-report`` (usage claims more
completion tokens than sent), ``slow`` (3 s before the first chunk, then 150 ms per
token: a miner on hardware far below the subnet's; ``lagging``: the same start, then 40 ms a
token: slow enough to rank last, quick enough not to set a validation round's length), ``flaky`` (every other request fails with a 500).
Serving another model or perturbed weights needs no proxy: the miner attaches to an
engine loaded with those weights (``perturbed_copy`` makes them).

Hostile modes attack the validator and the gateway rather than cheat on the model
(``HOSTILE``): a JSON list as an event, an error event whose ``error`` is a bare string,
token ids outside the vocabulary under honest text, text that is not what the ids spell
(HTML), every request refused with a 400 whose message is HTML and script, a 1 MiB event,
an endless stream, a slow drip of comments and no token, a drip of valid empty chunks, an HTML page as the stream,
bytes that are not UTF-8, every token id sent twice, an event after ``[DONE]``, HTML as every
logprob's token string (the ids and the text honest), and every request refused in-band: a 200
whose stream is a well-formed error event before any token (what an engine sends for a request it
cannot run: a miner that wants to skip work without it counting as a failure).

One process serves every mode: a miner attached to ``URL/MODE`` gets that mode (or
``--mode`` for paths without one).

    python -m tests.harness.adversary --upstream URL [--mode MODE] --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import aiohttp
from aiohttp import web

from protocol.streams import sse_events

CHEATS = ("invent-logprobs", "cut", "burst", "over-report", "slow", "lagging", "flaky", "two-faced", "steer", "cache", "refuse-users", "ignore-grammar")
HOSTILE = (
    "empty-drip",
    "list-event",
    "string-error",
    "bad-ids",
    "html-text",
    "refuse-html",
    "oversized-event",
    "endless",
    "drip",
    "html-page",
    "bad-utf8",
    "double-ids",
    "after-done",
    "html-logprobs",
    "refuse-event",
)
MODES = CHEATS + HOSTILE
HOSTILE_TEXT = "<script>alert('pwned')</script><b>BUY $SCAM</b>"
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def perturbed_copy(source: Path, out: Path, kind: str = "noise", amount: float = 0.0) -> Path:
    """A copy of model folder ``source`` with its weights changed: gaussian noise of ``amount`` ×
    each tensor's std, int8/int4 rounding per row, fp8 (e4m3) rounding per tensor, or the last
    ``amount`` layers dropped (a cheaper model of the same family). The manifest (declared id,
    hash) is kept: the copy claims to be the original."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, out)
    tensors = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(7)
    changed = {}
    if kind == "drop":
        config = json.loads((source / "config.json").read_text())
        kept = config["num_hidden_layers"] - int(amount)
        (out / "config.json").write_text(json.dumps({**config, "num_hidden_layers": kept}))
        tensors = {name: t for name, t in tensors.items() if not name.startswith("model.layers.") or int(name.split(".")[2]) < kept}
    for name, tensor in tensors.items():
        if kind == "noise":
            changed[name] = tensor + torch.randn(tensor.shape, generator=generator) * tensor.std() * amount
        elif kind == "drop":
            changed[name] = tensor
        elif kind == "fp8":
            scale = tensor.abs().amax().clamp(min=1e-12) / 448.0  # e4m3's largest finite value
            changed[name] = (tensor / scale).to(torch.float8_e4m3fn).float() * scale
        else:
            levels = {"int8": 127, "int4": 7}[kind]
            scale = tensor.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / levels
            changed[name] = (tensor / scale).round().clamp(-levels, levels) * scale
    save_file(changed, out / "model.safetensors", metadata={"format": "pt"})
    return out


def sse_event(event: Any) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def event_tokens(event: dict[str, Any]) -> int:
    return sum(len(c.get("token_ids") or []) for c in event.get("choices") or [])


def looks_like_challenge(body: dict[str, Any]) -> bool:
    """What a miner that read ``validator/challenges/tasks.py`` can tell: whether a conversation uses the
    generator's vocabulary (its word lists, names, topics, subjects, system prompts, greetings) or its
    checkable families' instructions. A replayed user prompt passes for a user's: it is one."""
    from validator.challenges import tasks

    text = " ".join(str(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))
    vocabulary = [*tasks.WORDS, *tasks.NAMES, *tasks.TOPICS, *tasks.SUBJECTS, *tasks.SYSTEMS, *(g.strip() for g in tasks.GREETINGS if g.strip())]
    phrases = (
        *("only.", "just the", "nothing else", "the number", "reversed", "backwards", "uppercase", "capital letters", "all caps", "JSON", "Sort", "order"),
        *("How many", "sorted", "How much is", "Compute", "Calculate", "Work out", "= ?", "line by line", "function", "loop", "code", "Tell me about"),
    )
    return any(word in text for word in (*vocabulary, *phrases))


class Adversary:
    def __init__(self, upstream: str, mode: str | None, cheap: str | None = None):
        self.upstream = upstream.rstrip("/")
        self.cheap = (cheap or upstream).rstrip("/")
        self.default_mode = mode
        self.requests: defaultdict[str, Iterator[int]] = defaultdict(itertools.count)  # per mode: one process serves them all
        self.answers: dict[str, list[bytes]] = {}  # cache: a conversation and budget → the events it was answered with
        self.rng = random.Random(0)
        self.session: aiohttp.ClientSession

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def close(self, app: web.Application) -> None:
        await self.session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        first, _, rest = request.path_qs.lstrip("/").partition("/")
        mode, path = (first, "/" + rest) if first in MODES else (self.default_mode, request.path_qs)
        if path.split("?")[0] in ("/v1/chat/completions", "/v1/completions") and request.method == "POST":
            if mode in HOSTILE:
                return await self.attack(request, mode, path, json.loads(body))
            if path == "/v1/chat/completions" and mode is not None:
                return await self.tamper(request, mode, path, json.loads(body))
        async with self.session.request(
            request.method, self.upstream + path, data=body or None, headers={"Content-Type": request.headers.get("Content-Type", "application/json")}
        ) as upstream:
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(body=await upstream.read(), status=upstream.status, headers=headers)

    async def tamper(self, request: web.Request, mode: str, path: str, body: dict[str, Any]) -> web.StreamResponse:
        if mode == "flaky" and next(self.requests[mode]) % 2 == 0:
            return web.json_response({"error": {"message": "engine hiccup", "type": "server_error"}}, status=500)
        if mode == "refuse-users" and not looks_like_challenge(body):
            return web.json_response({"error": {"message": "at capacity", "type": "server_error"}}, status=429)
        engine = self.cheap if mode == "two-faced" and not looks_like_challenge(body) else self.upstream
        if mode == "steer" and looks_like_challenge(body):
            body = {**body, "temperature": 0.0}
        if mode == "ignore-grammar":  # structured output or a tool call answered as free text: no grammar to decode under
            body = {k: v for k, v in body.items() if k != "response_format"}
        key = json.dumps([body.get("messages"), body.get("max_tokens")])
        if mode == "cache" and key in self.answers:
            return web.Response(body=b"".join(self.answers[key]) + b"data: [DONE]\n\n", content_type="text/event-stream")
        if not body.get("stream"):
            async with self.session.post(engine + path, json=body) as upstream:
                return web.Response(body=await upstream.read(), status=upstream.status, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        cut_at = max(2, int(body.get("max_tokens") or 48) // 3)
        sent, held, answer = 0, [], []
        async with self.session.post(engine + path, json=body) as upstream:
            if upstream.status != 200:  # the engine refused the request itself: passed on as it said it
                return web.Response(body=await upstream.read(), status=upstream.status, content_type="application/json")
            await response.prepare(request)
            if mode in ("slow", "lagging"):
                await asyncio.sleep(3.0)
            async for event in sse_events(upstream):
                if mode == "invent-logprobs":
                    for choice in event.get("choices") or []:
                        for entry in (choice.get("logprobs") or {}).get("content") or []:
                            entry["logprob"] = -self.rng.uniform(0.01, 0.3)
                elif mode == "over-report" and event.get("usage"):
                    event["usage"]["completion_tokens"] += 7
                    event["usage"]["total_tokens"] += 7
                elif mode == "cut" and sent >= cut_at:
                    break  # the rest is never generated for the caller: pretend the model ended here
                elif mode in ("slow", "lagging"):
                    await asyncio.sleep((0.15 if mode == "slow" else 0.04) * max(1, event_tokens(event)))
                sent += event_tokens(event)
                if mode == "burst":
                    held.append(sse_event(event))
                else:
                    await response.write(sse_event(event))
                answer.append(sse_event(event))
        if mode == "cut" and sent >= cut_at:
            base = {"id": "cut", "object": "chat.completion.chunk", "model": body.get("model")}
            await response.write(sse_event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(sse_event({**base, "choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": sent, "total_tokens": sent}}))
        if mode == "cache":
            self.answers[key] = answer
        await response.write(b"".join(held) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def attack(self, request: web.Request, mode: str, path: str, body: dict[str, Any]) -> web.StreamResponse:
        """A hostile answer to a completion request: what the mode says, around the honest engine's stream."""
        if mode == "refuse-html":
            message = f"<html><body>{HOSTILE_TEXT}</body></html>"
            return web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": 400}}, status=400)
        if mode == "html-page":
            return web.Response(text=f"<html><body>{HOSTILE_TEXT}</body></html>", content_type="text/html")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if mode == "refuse-event":
            await response.write(sse_event({"error": {"message": HOSTILE_TEXT, "type": "BadRequestError", "code": 400}}) + b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        if mode == "empty-drip":
            for _ in range(600):  # valid chunks with nothing in them, every half second, and never a token
                await response.write(
                    sse_event(
                        {
                            "id": "x",
                            "object": "chat.completion.chunk",
                            "created": 0,
                            "model": body.get("model"),
                            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": None}],
                        }
                    )
                )
                await asyncio.sleep(0.5)
            return response
        if mode == "drip":
            for _ in range(600):  # a comment every half second, and never a token
                await response.write(b": still thinking\n\n")
                await asyncio.sleep(0.5)
            return response
        sent = 0
        async with self.session.post(self.upstream + path, json={**body, "stream": True}) as upstream:
            async for event in sse_events(upstream):
                sent += 1
                await response.write(self._hostile_event(mode, event, sent))
        if mode == "endless":
            base = {"id": "x", "object": "chat.completion.chunk", "model": body.get("model")}
            more = {"content": [{"token": "token_id:42", "logprob": -1.0, "top_logprobs": []}]}  # well formed but for its length
            for _ in range(100_000):
                await response.write(
                    sse_event({**base, "choices": [{"index": 0, "delta": {"content": "more "}, "token_ids": [42], "logprobs": more, "finish_reason": None}]})
                )
        await response.write(b"data: [DONE]\n\n")
        if mode == "after-done":
            await response.write(
                b"data: [DONE]\n\n" + sse_event({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": HOSTILE_TEXT}}]})
            )
        await response.write_eof()
        return response

    def _hostile_event(self, mode: str, event: dict[str, Any], sent: int) -> bytes:
        """One event of the honest stream as ``mode`` sends it (the third event carries the attack where it is one event)."""
        choices = event.get("choices") or []
        if mode == "list-event" and sent == 3:
            return sse_event([event]) + sse_event(event)  # type: ignore[arg-type]
        if mode == "string-error" and sent == 3:
            return sse_event({"error": HOSTILE_TEXT})
        if mode == "oversized-event" and sent == 3:
            return sse_event({**event, "padding": "x" * (1 << 20)})
        if mode == "bad-utf8" and sent == 3:
            return b'data: {"choices": [{"index": 0, "delta": {"content": "\xff\xfe"}}]}\n\n'
        for choice in choices:
            if mode == "bad-ids" and choice.get("token_ids"):
                choice["token_ids"] = [10**6 + t for t in choice["token_ids"]]
            elif mode == "html-text" and (choice.get("delta") or {}).get("content"):
                choice["delta"]["content"] = HOSTILE_TEXT
            elif mode == "html-text" and choice.get("text"):
                choice["text"] = HOSTILE_TEXT
            elif mode == "double-ids" and choice.get("token_ids"):
                choice["token_ids"] = choice["token_ids"] * 2
            elif mode == "endless":
                choice["finish_reason"] = None
            elif mode == "html-logprobs":
                logprobs = choice.get("logprobs") or {}
                for entry in logprobs.get("content") or []:  # a chat completion's
                    entry["token"] = HOSTILE_TEXT
                    for top in entry.get("top_logprobs") or []:
                        top["token"] = HOSTILE_TEXT
                if logprobs.get("tokens"):  # a text completion's: its tokens and its alternatives' keys
                    logprobs["tokens"] = [HOSTILE_TEXT] * len(logprobs["tokens"])
                    logprobs["top_logprobs"] = [{HOSTILE_TEXT: -0.1} for _ in logprobs["tokens"]]
        return sse_event(event)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the real engine's URL")
    parser.add_argument("--mode", default=None, choices=MODES, help="the mode for paths that do not name one")
    parser.add_argument("--cheap", default=None, help="two-faced: the cheaper engine users get")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    adversary = Adversary(args.upstream, args.mode, args.cheap)
    app = web.Application(client_max_size=16 * 2**20)
    app.on_startup.append(adversary.start)
    app.on_cleanup.append(adversary.close)
    app.router.add_route("*", "/{tail:.*}", adversary.forward)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

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
token: a miner on hardware far below the subnet's), ``flaky`` (every other request fails with a 500).
Serving another model or perturbed weights needs no proxy: the miner attaches to an
engine loaded with those weights (``perturbed_copy`` makes them).

    python -m tests.harness.adversary --upstream URL --mode MODE --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shutil
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from miner.client import sse_events

MODES = ("invent-logprobs", "cut", "burst", "over-report", "slow", "flaky")
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def perturbed_copy(source: Path, out: Path, kind: str = "noise", amount: float = 0.0) -> Path:
    """A copy of model folder ``source`` with its weights changed: gaussian noise of ``amount`` ×
    each tensor's std, or int8/int4 rounding per row. The manifest (declared id, hash) is kept:
    the copy claims to be the original."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, out)
    tensors = load_file(source / "model.safetensors")
    generator = torch.Generator().manual_seed(7)
    changed = {}
    for name, tensor in tensors.items():
        if kind == "noise":
            changed[name] = tensor + torch.randn(tensor.shape, generator=generator) * tensor.std() * amount
        else:
            levels = {"int8": 127, "int4": 7}[kind]
            scale = tensor.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / levels
            changed[name] = (tensor / scale).round().clamp(-levels, levels) * scale
    save_file(changed, out / "model.safetensors", metadata={"format": "pt"})
    return out


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _tokens(event: dict[str, Any]) -> int:
    return sum(len(c.get("token_ids") or []) for c in event.get("choices") or [])


class Adversary:
    def __init__(self, upstream: str, mode: str):
        self.upstream = upstream.rstrip("/")
        self.mode = mode
        self.requests = itertools.count()
        self.rng = random.Random(0)
        self.session: aiohttp.ClientSession

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def close(self, app: web.Application) -> None:
        await self.session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path == "/v1/chat/completions" and request.method == "POST":
            return await self.tamper(request, json.loads(body))
        async with self.session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                        headers={"Content-Type": request.headers.get("Content-Type", "application/json")}) as upstream:
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(body=await upstream.read(), status=upstream.status, headers=headers)

    async def tamper(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if self.mode == "flaky" and next(self.requests) % 2 == 0:
            return web.json_response({"error": {"message": "engine hiccup", "type": "server_error"}}, status=500)
        if not body.get("stream"):
            async with self.session.post(self.upstream + request.path, json=body) as upstream:
                return web.Response(body=await upstream.read(), status=upstream.status, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        cut_at = max(2, int(body.get("max_tokens") or 48) // 3)
        sent, held = 0, []
        async with self.session.post(self.upstream + request.path, json=body) as upstream:
            if self.mode == "slow":
                await asyncio.sleep(3.0)
            async for event in sse_events(upstream):
                if self.mode == "invent-logprobs":
                    for choice in event.get("choices") or []:
                        for entry in (choice.get("logprobs") or {}).get("content") or []:
                            entry["logprob"] = -self.rng.uniform(0.01, 0.3)
                elif self.mode == "over-report" and event.get("usage"):
                    event["usage"]["completion_tokens"] += 7
                    event["usage"]["total_tokens"] += 7
                elif self.mode == "cut" and sent >= cut_at:
                    break  # the rest is never generated for the caller: pretend the model ended here
                elif self.mode == "slow":
                    await asyncio.sleep(0.15 * max(1, _tokens(event)))
                sent += _tokens(event)
                if self.mode == "burst":
                    held.append(_sse(event))
                else:
                    await response.write(_sse(event))
        if self.mode == "cut" and sent >= cut_at:
            base = {"id": "cut", "object": "chat.completion.chunk", "model": body.get("model")}
            await response.write(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(_sse({**base, "choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": sent, "total_tokens": sent}}))
        await response.write(b"".join(held) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the real engine's URL")
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    adversary = Adversary(args.upstream, args.mode)
    app = web.Application(client_max_size=16 * 2**20)
    app.on_startup.append(adversary.start)
    app.on_cleanup.append(adversary.close)
    app.router.add_route("*", "/{tail:.*}", adversary.forward)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

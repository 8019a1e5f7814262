"""Machines of known capacity for tests: a real engine's answers, paced as one engine of a given size.

What is under test is how pay follows the capacity hotkeys really have, and two CPU cores
cannot host one vLLM engine per miner, each of a known size. So one real engine computes
every answer (real tokens, real logprobs: every answer is verified) and this proxy hands
each "machine" its tokens no faster than an engine of that size would: ``--rate`` tokens/s
for the whole machine, and ``--rate / --streams`` for any one stream (as a real engine
serves up to its batch size at full speed, then shares its throughput). It is a
stand-in for hardware only, said so here; the miners in front of it are real
``slmnet miner`` processes, and the adversaries are how they share it:

- ``URL/machine-NAME``: machine NAME; miners given the same URL share it (sybils on one engine);
- ``URL/merge-NAME``: the same, and a request whose body equals one it has answered or is
  answering is answered from that computation (a pair of sybils that merges identical
  requests) at once, costing the machine nothing.

``GET URL/stats`` says how many requests were merged and the tokens each machine served.

    python -m tests.harness.machines --upstream URL --port PORT [--rate 64] [--streams 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from protocol.streams import sse_events
from tests.harness.adversary import HOP_HEADERS, event_tokens, sse_event


@dataclass
class Machine:
    rate: float  # tokens/s the whole machine produces
    stream_rate: float  # tokens/s one stream gets at most
    free_at: float = 0.0  # when the machine has produced every token promised so far

    async def produce(self, stream: list[float], tokens: int) -> None:
        """Wait until ``tokens`` more tokens of one stream (``stream[0]``: when its last ones were
        ready) would be ready on this machine."""
        now = asyncio.get_running_loop().time()
        self.free_at = max(self.free_at, now) + tokens / self.rate
        stream[0] = max(self.free_at, max(stream[0], now) + tokens / self.stream_rate)
        await asyncio.sleep(stream[0] - now)


class Machines:
    def __init__(self, upstream: str, rate: float, streams: int):
        self.upstream = upstream.rstrip("/")
        self.rate, self.streams = rate, streams
        self.machines: dict[str, Machine] = {}
        self.answers: dict[bytes, asyncio.Future] = {}  # merge: a body → the events it was answered with
        self.merged = 0
        self.tokens: Counter[str] = Counter()

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def close(self, app: web.Application) -> None:
        await self.session.close()

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"merged": self.merged, "tokens": dict(self.tokens)})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        first, _, rest = request.path_qs.lstrip("/").partition("/")
        kind, _, name = first.partition("-")
        on_machine = kind in ("machine", "merge") and bool(name)
        path = "/" + rest if on_machine else request.path_qs
        if on_machine and path == "/v1/chat/completions" and request.method == "POST" and json.loads(body).get("stream"):
            machine = self.machines.setdefault(first, Machine(self.rate, self.rate / self.streams))
            return await self.paced(request, machine, first, kind == "merge", body)
        async with self.session.request(
            request.method, self.upstream + path, data=body or None, headers={"Content-Type": request.headers.get("Content-Type", "application/json")}
        ) as upstream:
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(body=await upstream.read(), status=upstream.status, headers=headers)

    async def paced(self, request: web.Request, machine: Machine, name: str, merge: bool, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if merge and body in self.answers:
            self.merged += 1
            for event in await asyncio.shield(self.answers[body]):
                await response.write(sse_event(event))
        else:
            computed = asyncio.get_running_loop().create_future()
            if merge:
                self.answers[body] = computed
            events: list[Any] = []
            stream = [0.0]
            try:
                async with self.session.post(self.upstream + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}) as upstream:
                    async for event in sse_events(upstream):
                        if tokens := event_tokens(event):
                            await machine.produce(stream, tokens)
                            self.tokens[name] += tokens
                        events.append(event)
                        await response.write(sse_event(event))
            finally:
                computed.set_result(events)  # merged requests get what was computed, whole or not
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the real engine")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=64.0, help="tokens/s one machine produces")
    parser.add_argument("--streams", type=int, default=4, help="streams one machine serves at full speed")
    args = parser.parse_args()
    machines = Machines(args.upstream, args.rate, args.streams)
    app = web.Application(client_max_size=16 * 2**20)
    app.on_startup.append(machines.start)
    app.on_cleanup.append(machines.close)
    app.router.add_get("/stats", machines.stats)
    app.router.add_route("*", "/{tail:.*}", machines.forward)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

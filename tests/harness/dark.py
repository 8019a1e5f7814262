"""A dark miner's front: a real `slmnet miner` that users cannot reach, and validators can.

A miner that has read the gateway's source knows it routes users only to miners whose
``/health`` answers 200, and that a validator's challenges come signed to the same
endpoint. This proxy sits at the address the miner announces on chain: it answers every
``/health`` with 503 (what a gateway sees of a miner that drops its connections, or that
is reachable from a validator's address only) and forwards every other request to the
miner byte for byte, headers, body and stream, so the validator's signed challenges reach
it and are answered by the honest engine behind it. Nothing here is mocked: the cheat is
the front, the rest is the real miner.

    python -m tests.harness.dark --upstream http://127.0.0.1:MINER_PORT --port PORT
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    if request.path == "/health":
        return web.json_response({"status": "unavailable"}, status=503)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
    upstream_url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].request(request.method, upstream_url, data=await request.read() or None, headers=headers) as upstream:
        response = web.StreamResponse(status=upstream.status, headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS})
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():  # chunk by chunk: the validator times the stream as the miner sent it
            await response.write(chunk)
        await response.write_eof()
        return response


async def _session(app: web.Application):
    app[SESSION] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
    yield
    await app[SESSION].close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the real miner's URL")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=16 * 2**20)
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

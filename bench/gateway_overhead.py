"""What the gateway adds: latency over calling the upstream directly, at fixed request rates.

A fast local upstream stands in for miners (one process, answers at once: a short
completion streamed in 8 chunks, or whole), so only the gateway is measured. The gateway
runs in its own process with everything a real request goes through: API key lookup,
per-key limits, body validation, prompt tokens counted with the model's tokenizer,
routing, a btauth/1 signature per upstream call, SSE relaying, tokens counted on the
answer, the SQLite ledger. The load generator (a third process) sends requests open-loop
at each rate for ``--seconds`` and measures each one to its last byte, first straight to
the upstream, then through the gateway, alternating rates so drift hits both alike.

    python -m bench.gateway_overhead [--rates 100,500,1000] [--seconds 5] [--workers N] [--vs litellm] [--json]

On a 2-core machine the three processes share the cores: the figures include that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web


from bench._common import free_port

MODEL = "slmnet/tiny-qwen2-s0"
WORDS = ["Paris", " is", " the", " capital", " of", " France", ".", ""]


def _pieces(tokenizer: str, text: str) -> list[tuple[int, str]]:
    """(token id, the text it adds) for ``text`` in the tiny model's tokenizer: what an honest
    engine streams, so the gateway's check that text is what its ids spell passes."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    ids = tok.encode(text, add_special_tokens=False)
    texts = [tok.decode(ids[: i + 1]) for i in range(len(ids))]
    return [(ids[i], texts[i][len(texts[i - 1]) if i else 0 :]) for i in range(len(ids))]


def _serve_upstream(port: int, tokenizer: str) -> None:
    """The stand-in miner: answers every completion at once."""
    import uvloop

    pieces = _pieces(tokenizer, "".join(WORDS))

    def chunk(token_id: int, word: str, finish=None) -> bytes:
        event = {
            "id": "up",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": word},
                    "finish_reason": finish,
                    "token_ids": [token_id],
                    "logprobs": {"content": [{"token": word, "logprob": -0.1, "top_logprobs": []}]},
                }
            ],
        }
        return b"data: " + json.dumps(event).encode() + b"\n\n"

    stream_body = b"".join(chunk(t, w, "length" if i == len(pieces) - 1 else None) for i, (t, w) in enumerate(pieces)) + b"data: [DONE]\n\n"
    whole = {
        "id": "up",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": len(pieces), "total_tokens": 12 + len(pieces)},
    }

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(whole)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in stream_body.split(b"\n\n")[:-1]:
            await response.write(part + b"\n\n")
        await response.write_eof()
        return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _serve_gateway(port: int, upstream: str, db: str, tokenizer: str, redis_url: str | None = None, worker: str = "") -> None:
    """The real gateway app, routed to the stand-in as one miner of large capacity; with
    ``redis_url`` one of several workers on the port, its limits in Redis."""
    import uvloop
    from bittensor.sp_core import Keypair

    from gateway.router import MinerView, Router
    from gateway.server import create_app
    from gateway.state import GatewaySettings, GatewayState
    from gateway.store import Store
    from models.tokenizer import ModelTokenizer

    keypair = Keypair.create_from_uri("//slmnet-bench")
    settings = GatewaySettings(redis_url=redis_url, worker=worker, verify_share=0.0)  # no validator reads this outbox
    router = Router(explore=settings.explore)
    router.update_from_chain([MinerView(1, keypair.ss58_address, upstream, MODEL, capacity=100_000, incentive=1.0)])
    state = GatewayState(store=Store(Path(db)), router=router, tokenizers={MODEL: ModelTokenizer(tokenizer)}, keypair=keypair, settings=settings)
    uvloop.install()
    web.run_app(create_app(state), host="127.0.0.1", port=port, print=None, access_log=None, reuse_port=bool(worker))


async def _load(url: str, key: str, rate: float, seconds: float, stream: bool) -> tuple[list[float], int]:
    """Open-loop load: request i leaves at i / rate; returns latencies (s) and the error count."""
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16, "stream": stream}
    ).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    latencies, errors = [], 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            started = time.perf_counter()
            try:
                async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append(time.perf_counter() - started)

        # Requests are started by one pacing loop as their times come: creating every task up front
        # (30 000 at 500 rps for 60 s) took longer than the lead time, and the first ones left in a burst.
        begin, tasks = time.perf_counter() + 0.2, []
        for i in range(int(rate * seconds)):
            at = begin + i / rate
            if at > time.perf_counter():
                await asyncio.sleep(at - time.perf_counter())
            tasks.append(asyncio.create_task(one(at)))
        await asyncio.gather(*tasks)
    return latencies, errors


def _measure(url: str, key: str, rate: float, seconds: float, stream: bool) -> dict:
    import uvloop

    latencies, errors = uvloop.run(_load(url, key, rate, seconds, stream))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")  # noqa: E731
    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "ok": len(latencies), "errors": errors}


def wait_ready(url: str, process: multiprocessing.Process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if not process.is_alive():
            raise SystemExit(f"the gateway process exited with {process.exitcode}")
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[100.0, 500.0, 1000.0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-rate-steps", type=lambda v: [float(x) for x in v.split(",")], default=[100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0])
    parser.add_argument("--workers", type=int, default=1, help="gateway processes on the port; above 1 their limits are in a redis-server the bench starts")
    parser.add_argument("--vs", choices=["litellm"], default=None, help="also measure the LiteLLM proxy in front of the same upstream (installed on first use)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slmnet-bench-") as tmp_name:
        rows, held = _run(args, Path(tmp_name))
    _report(rows, held, args.json, args.workers)


def _run(args: argparse.Namespace, tmp: Path) -> tuple[list[dict], float]:
    """The stand-in upstream and a gateway in front of it as processes; each rate direct, then
    through the gateway; then the highest rate the gateway holds with p99 under 10 ms."""
    from gateway.store import Store
    from models.tiny import build_tiny

    spawn = multiprocessing.get_context("spawn")
    build_tiny(tmp / "tiny", seed=0)
    # Limits that never bind but are checked on every request (in Redis with workers, as deployed).
    key, _ = Store(tmp / "gateway.sqlite").create_key("bench", rpm=10**7, tpm=10**9)
    upstream_port, gateway_port = free_port(), free_port()
    upstream_url, gateway_url = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{gateway_port}"
    redis = _redis(tmp) if args.workers > 1 else None
    gateway_args = (gateway_port, upstream_url, str(tmp / "gateway.sqlite"), str(tmp / "tiny"))
    workers = [("", None)] if redis is None else [(f"w{i}", redis[1]) for i in range(args.workers)]
    processes = [spawn.Process(target=_serve_upstream, args=(upstream_port, str(tmp / "tiny")), daemon=True)]
    processes += [spawn.Process(target=_serve_gateway, args=(*gateway_args, url, name), daemon=True) for name, url in workers]
    for p in processes:
        p.start()
    litellm = None
    try:
        if args.vs == "litellm":
            from bench import _litellm

            litellm_port = free_port()
            litellm = _litellm.start(upstream_url, MODEL, litellm_port, tmp)
            litellm_url = f"http://127.0.0.1:{litellm_port}"
        for p in processes[1:]:
            wait_ready(gateway_url + "/health", p)  # imports (transformers, bittensor) take seconds
        for stream in (False, True):  # warm both paths
            _measure(gateway_url, key, 50, 1, stream)
            _measure(upstream_url, key, 50, 1, stream)
            if litellm is not None:
                _measure(litellm_url, _litellm.MASTER_KEY, 20, 1, stream)
        rows = []
        for stream in (False, True):
            for rate in args.rates:
                direct = _measure(upstream_url, key, rate, args.seconds, stream)
                through = _measure(gateway_url, key, rate, args.seconds, stream)
                added = {"added_p50_ms": through["p50_ms"] - direct["p50_ms"], "added_p99_ms": through["p99_ms"] - direct["p99_ms"]}
                if litellm is not None:
                    other = _measure(litellm_url, _litellm.MASTER_KEY, rate, args.seconds, stream)
                    added |= {
                        "litellm": other,
                        "litellm_added_p50_ms": other["p50_ms"] - direct["p50_ms"],
                        "litellm_added_p99_ms": other["p99_ms"] - direct["p99_ms"],
                    }
                rows.append({"stream": stream, "rate": rate, "direct": direct, "gateway": through, **added})
        held = 0.0
        for rate in args.max_rate_steps:
            through = _measure(gateway_url, key, rate, args.seconds, False)
            if through["errors"] or through["p99_ms"] >= 10.0:
                break
            held = rate
        return rows, held
    finally:
        for p in processes:
            p.terminate()
            p.join()
        for server in (redis[0] if redis else None, litellm):
            if server is not None:
                server.terminate()
                server.wait()


def _redis(tmp: Path):
    """A redis-server on a free port for the workers' limits: (process, URL)."""
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("redis-server did not start")


def _report(rows: list[dict], held: float, as_json: bool, workers: int = 1) -> None:
    print(f"gateway workers: {workers}" + (" (limits in Redis)" if workers > 1 else " (limits in memory)"))
    vs = any("litellm" in r for r in rows)
    extra = " LiteLLM added p50 ms | LiteLLM added p99 ms | LiteLLM errors | LiteLLM / slmnet added p50 |" if vs else ""
    print("| stream | rate rps | direct p50 ms | direct p99 ms | gateway p50 ms | gateway p99 ms | added p50 ms | added p99 ms | errors |" + extra)
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if vs else ""))
    for r in rows:
        line = (
            f"| {r['stream']} | {r['rate']:.0f} | {r['direct']['p50_ms']:.2f} | {r['direct']['p99_ms']:.2f} | {r['gateway']['p50_ms']:.2f} | "
            f"{r['gateway']['p99_ms']:.2f} | {r['added_p50_ms']:.2f} | {r['added_p99_ms']:.2f} | {r['gateway']['errors']} |"
        )
        if "litellm" in r:
            ratio = r["litellm_added_p50_ms"] / r["added_p50_ms"] if r["added_p50_ms"] > 0 else float("nan")
            line += f" {r['litellm_added_p50_ms']:.2f} | {r['litellm_added_p99_ms']:.2f} | {r['litellm']['errors']} | {ratio:.1f} |"
        print(line)
    print(f"\nhighest rate held with gateway p99 < 10 ms (non-streaming): {held:.0f} rps")
    figures = {"workers": workers, "max_rate_p99_under_10ms_rps": held}
    for r in rows:
        tag = f"{'stream' if r['stream'] else 'whole'}_{r['rate']:.0f}rps"
        figures[f"added_p50_ms_{tag}"] = r["added_p50_ms"]
        figures[f"gateway_p50_ms_{tag}"] = r["gateway"]["p50_ms"]
        figures[f"gateway_p99_ms_{tag}"] = r["gateway"]["p99_ms"]
        figures[f"gateway_ok_{tag}"] = r["gateway"]["ok"]
        figures[f"gateway_errors_{tag}"] = r["gateway"]["errors"]
        figures[f"added_p99_ms_{tag}"] = r["added_p99_ms"]
        figures[f"gateway_to_direct_p50_ratio_{tag}"] = r["gateway"]["p50_ms"] / r["direct"]["p50_ms"]
        if "litellm" in r:
            figures[f"litellm_added_p50_ms_{tag}"] = r["litellm_added_p50_ms"]
            figures[f"litellm_to_gateway_added_p50_ratio_{tag}"] = r["litellm_added_p50_ms"] / r["added_p50_ms"] if r["added_p50_ms"] > 0 else None
    if as_json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""What the gateway adds: latency over calling the upstream directly, at fixed request rates.

A fast local upstream stands in for miners (one process, answers at once: a short
completion streamed in 8 chunks, or whole), so only the gateway is measured. The gateway
runs in its own process with everything a real request goes through: API key lookup,
per-key limits, body validation, prompt tokens counted with the model's tokenizer,
routing, a btauth/1 signature per upstream call, SSE relaying, tokens counted on the
answer, the SQLite ledger. The load generator (a third process) sends requests open-loop
at each rate for ``--seconds`` and measures each one to its last byte, first straight to
the upstream, then through the gateway, alternating rates so drift hits both alike.

Beside it, in the same run: the floor (a bare aiohttp proxy of the same two hops: read the
request, forward it on one client session, relay the answer's bytes; no checks, no ledger)
and, with ``--vs``, real peers in front of the same upstream: the LiteLLM proxy and
Portkey's open-source gateway (each installed on first use, in its own folder).

    python -m bench.gateway_overhead [--rates 5,100,200,500] [--seconds 5] [--repeat 3] [--workers N] [--vs litellm] [--vs portkey] [--profile FILE] [--json]

On a 2-core machine the processes share the cores: the figures include that. ``--json`` ends
with one object; ``added_p50_ratio_vs_PEER`` is the gateway's added p50 over the peer's,
the median over the rows (below 1: lighter than the peer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
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


def serve_upstream(port: int, tokenizer: str) -> None:
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
                    "logprobs": {"content": [{"token": f"token_id:{token_id}", "logprob": -0.1, "top_logprobs": []}]},
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

    arrivals: list[float] = []  # when each completion request arrived (monotonic: one clock for every process here)

    async def chat(request: web.Request) -> web.StreamResponse:
        arrivals.append(time.monotonic())
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

    async def arrived(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/arrivals", arrived)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_floor(port: int, upstream: str) -> None:
    """The floor: what two HTTP hops cost in aiohttp alone, with nothing the gateway does between them."""
    import uvloop

    async def session_ctx(app: web.Application):
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app["session"].post(upstream + request.path, data=body, headers={"Content-Type": "application/json"}) as answer:
            if answer.content_type != "text/event-stream":
                return web.Response(body=await answer.read(), status=answer.status, content_type=answer.content_type)
            response = web.StreamResponse(status=answer.status, headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for data in answer.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.cleanup_ctx.append(session_ctx)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_gateway(port: int, upstream: str, db: str, tokenizer: str, redis_url: str | None = None, worker: str = "", profile: str | None = None) -> None:
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
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    web.run_app(create_app(state), host="127.0.0.1", port=port, print=None, access_log=None, reuse_port=bool(worker))
    if profiler is not None:  # SIGTERM ends run_app cleanly
        profiler.disable()
        profiler.dump_stats(profile)


async def _load(url: str, headers: dict[str, str], rate: float, seconds: float, stream: bool) -> tuple[list[float], int]:
    """Open-loop load: request i leaves at i / rate; returns latencies (s) and the error count."""
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16, "stream": stream}
    ).encode()
    headers = {"Content-Type": "application/json", **headers}
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


def _measure(url: str, headers: dict[str, str], rate: float, seconds: float, stream: bool) -> dict:
    import uvloop

    latencies, errors = uvloop.run(_load(url, headers, rate, seconds, stream))
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")  # noqa: E731
    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "ok": len(latencies), "errors": errors}


def _median_run(runs: list[dict]) -> dict:
    """Repeated measurements of one target at one rate: the median p50 and p99, every request counted."""
    middle = lambda key: statistics.median(run[key] for run in runs)  # noqa: E731
    return {"p50_ms": middle("p50_ms"), "p99_ms": middle("p99_ms"), "ok": sum(run["ok"] for run in runs), "errors": sum(run["errors"] for run in runs)}


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


PEERS = ("litellm", "portkey")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[5.0, 100.0, 200.0, 500.0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure every target this many times at each rate, in turn; the rows show the medians (this machine's noise moves one run's ratio by ±1)",
    )
    parser.add_argument("--max-rate-steps", type=lambda v: [float(x) for x in v.split(",")], default=[100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0])
    parser.add_argument("--workers", type=int, default=1, help="gateway processes on the port; above 1 their limits are in a redis-server the bench starts")
    parser.add_argument(
        "--vs", choices=PEERS, action="append", default=[], help="also measure this peer in front of the same upstream (installed on first use; repeatable)"
    )
    parser.add_argument("--profile", metavar="FILE", help="run the (one) gateway process under cProfile and write its stats here")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slmnet-bench-") as tmp_name:
        rows, held = _run(args, Path(tmp_name))
    _report(rows, held, args.json, args.workers)


def _run(args: argparse.Namespace, tmp: Path) -> tuple[list[dict], float]:
    """The stand-in upstream, the floor, a gateway and the peers in front of it as processes; each
    rate direct, then through each of them; then the highest rate the gateway holds with p99 under 10 ms."""
    from gateway.store import Store
    from models.tiny import build_tiny

    spawn = multiprocessing.get_context("spawn")
    build_tiny(tmp / "tiny", seed=0)
    # Limits that never bind but are checked on every request (in Redis with workers, as deployed).
    key, _ = Store(tmp / "gateway.sqlite").create_key("bench", rpm=10**7, tpm=10**9)
    upstream_port, gateway_port, floor_port = free_port(), free_port(), free_port()
    upstream_url, gateway_url = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{gateway_port}"
    redis = _redis(tmp) if args.workers > 1 else None
    gateway_args = (gateway_port, upstream_url, str(tmp / "gateway.sqlite"), str(tmp / "tiny"))
    workers = [("", None)] if redis is None else [(f"w{i}", redis[1]) for i in range(args.workers)]
    processes = [spawn.Process(target=serve_upstream, args=(upstream_port, str(tmp / "tiny")), daemon=True)]
    processes.append(spawn.Process(target=serve_floor, args=(floor_port, upstream_url), daemon=True))
    processes += [spawn.Process(target=serve_gateway, args=(*gateway_args, url, name, args.profile), daemon=True) for name, url in workers]
    for p in processes:
        p.start()
    # Each target: its URL and the headers a request to it carries.
    targets = {"direct": (upstream_url, {}), "gateway": (gateway_url, {"Authorization": f"Bearer {key}"}), "floor": (f"http://127.0.0.1:{floor_port}", {})}
    peers = []
    try:
        for name in args.vs:
            port = free_port()
            if name == "litellm":
                from bench import _litellm

                peers.append(_litellm.start(upstream_url, MODEL, port, tmp))
                targets[name] = (f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {_litellm.MASTER_KEY}"})
            else:
                from bench import _portkey

                peers.append(_portkey.start(port, tmp))
                targets[name] = (f"http://127.0.0.1:{port}", _portkey.headers(upstream_url))
        for p in processes[2:]:
            wait_ready(gateway_url + "/health", p)  # imports (transformers, bittensor) take seconds
        for stream in (False, True):  # warm every path
            for url, headers in targets.values():
                _measure(url, headers, 50, 1, stream)
        rows = []
        for stream in (False, True):
            for rate in args.rates:
                runs: dict[str, list[dict]] = {name: [] for name in targets}
                for _ in range(args.repeat):
                    for name, (url, headers) in targets.items():  # one after another at each rate, so drift hits all alike
                        runs[name].append(_measure(url, headers, rate, args.seconds, stream))
                row = {"stream": stream, "rate": rate, **{name: _median_run(measured) for name, measured in runs.items()}}
                for name in targets.keys() - {"direct"}:
                    row[name] |= {"added_p50_ms": row[name]["p50_ms"] - row["direct"]["p50_ms"], "added_p99_ms": row[name]["p99_ms"] - row["direct"]["p99_ms"]}
                rows.append(row)
        held = 0.0
        for rate in args.max_rate_steps:
            through = _measure(gateway_url, targets["gateway"][1], rate, args.seconds, False)
            if through["errors"] or through["p99_ms"] >= 10.0:
                break
            held = rate
        return rows, held
    finally:
        for p in processes:
            p.terminate()
            p.join()
        for server in [redis[0] if redis else None, *peers]:
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
    others = [name for name in ("floor", *PEERS) if name in rows[0]]
    head = "| stream | rate rps | direct p50 ms | gateway p50 ms | gateway p99 ms | added p50 ms | added p99 ms | errors |"
    head += "".join(f" {name} added p50 ms | {name} added p99 ms | {name} errors |" for name in others)
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = f"| {r['stream']} | {r['rate']:.0f} | {r['direct']['p50_ms']:.2f} | {r['gateway']['p50_ms']:.2f} | {r['gateway']['p99_ms']:.2f} | "
        line += f"{r['gateway']['added_p50_ms']:.2f} | {r['gateway']['added_p99_ms']:.2f} | {r['gateway']['errors']} |"
        line += "".join(f" {r[name]['added_p50_ms']:.2f} | {r[name]['added_p99_ms']:.2f} | {r[name]['errors']} |" for name in others)
        print(line)
    print(f"\nhighest rate held with gateway p99 < 10 ms (non-streaming): {held:.0f} rps")
    figures: dict[str, object] = {"workers": workers, "max_rate_p99_under_10ms_rps": held}
    for r in rows:
        tag = f"{'stream' if r['stream'] else 'whole'}_{r['rate']:.0f}rps"
        figures[f"direct_p50_ms_{tag}"] = r["direct"]["p50_ms"]
        for name in ("gateway", *others):
            prefix = "" if name == "gateway" else f"{name}_"
            figures[f"{prefix}added_p50_ms_{tag}"] = r[name]["added_p50_ms"]
            figures[f"{prefix}added_p99_ms_{tag}"] = r[name]["added_p99_ms"]
            figures[f"{prefix}errors_{tag}"] = r[name]["errors"]
        figures[f"gateway_ok_{tag}"] = r["gateway"]["ok"]
        figures[f"gateway_p50_ms_{tag}"], figures[f"gateway_p99_ms_{tag}"] = r["gateway"]["p50_ms"], r["gateway"]["p99_ms"]
    for name in others:  # ours over theirs, the median over the rows: below 1, lighter than them
        ratios = sorted(r["gateway"]["added_p50_ms"] / r[name]["added_p50_ms"] for r in rows if r[name]["added_p50_ms"] > 0 and not r[name]["errors"])
        figures[f"added_p50_ratio_vs_{name}"] = ratios[len(ratios) // 2] if ratios else None
    if as_json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

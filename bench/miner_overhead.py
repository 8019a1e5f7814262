"""What the miner adds on top of vLLM: streamed tokens per second and time to first token,
through the miner against the same engine called directly, at several concurrencies.

Starts a localnet, the real vLLM CPU engine (the tiny model unless --model is given) and
`slmnet miner` attached to it, then sends the same streaming requests both ways in
short alternating rounds (direct, miner, miner, direct, ...), so drift in the machine's
speed hits both paths alike; each figure is the median over rounds of the paired
ratio or difference. Both paths sign their requests (the engine ignores the headers),
so the client does the same work.

On a small machine the miner competes with the engine's own API server for CPU, so a
second run puts a stand-in upstream in the engine's place: a process that streams
vLLM-shaped events at a fixed pace (--fake-token-ms) with no model behind it. It is not
an engine and claims nothing about one; it isolates what the miner itself costs.

    python -m bench.miner_overhead [--concurrency 1 8 32] [--rounds 8] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import bittensor as bt

import chain
from bench._common import free_port, model_or_tiny, stop, wait_healthy
from chain.localnet import admin
from engine import EngineSpec
from models.manifest import ModelManifest
from signed.client import signed_headers


async def one_request(session: aiohttp.ClientSession, url: str, body: bytes, keypair, receiver: str) -> tuple[float, float, int, float]:
    """(time to first byte s, total s, tokens, the miner's own pre-forward ms or nan) for one streamed completion."""
    path = "/v1/chat/completions"
    started = time.perf_counter()
    async with session.post(url + path, data=body, headers=signed_headers(keypair, receiver, "POST", path, body)) as response:
        if response.status != 200:
            raise SystemExit(f"{url} answered {response.status}: {await response.text()}")
        first, events = None, 0
        async for chunk in response.content.iter_any():
            if first is None:
                first = time.perf_counter() - started
            events += chunk.count(b'"token_ids":[')
        own = float(response.headers.get("X-Slmnet-Miner-Overhead-Ms", "nan"))
    return first, time.perf_counter() - started, events, own


async def level(session, url: str, body: bytes, keypair, receiver: str, concurrency: int, requests: int) -> dict:
    """Run ``requests`` requests, ``concurrency`` at a time; throughput over the whole level."""
    queue = list(range(requests))
    results = []

    async def worker() -> None:
        while queue:
            queue.pop()
            results.append(await one_request(session, url, body, keypair, receiver))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    tokens = sum(r[2] for r in results)
    return {"tokens_per_s": tokens / wall, "ttft": [r[0] for r in results], "own_ms": [r[3] for r in results]}


async def measure(args, engine_url: str, miner_url: str, model_id: str, keypair, receiver: str, label: str) -> list[dict]:
    body = json.dumps(
        {
            "model": model_id,
            "messages": [{"role": "user", "content": "Write a short story about a lighthouse."}],
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "temperature": 0.7,
            "stream": True,
            "return_token_ids": True,
        }
    ).encode()
    rows = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await level(session, engine_url, body, keypair, receiver, 4, 8)  # warm-up of both paths
        await level(session, miner_url, body, keypair, receiver, 4, 8)
        for concurrency in args.concurrency:
            requests = max(args.min_requests, concurrency * args.requests_per_slot)
            paths = {"direct": engine_url, "miner": miner_url}
            runs = {"direct": [], "miner": []}
            for round_ in range(args.rounds):
                for name in ("direct", "miner") if round_ % 2 == 0 else ("miner", "direct"):
                    runs[name].append(await level(session, paths[name], body, keypair, receiver, concurrency, requests))
            row = {"upstream": label, "concurrency": concurrency, "requests": requests * args.rounds}
            for name, results in runs.items():
                row[f"{name}_tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in results)
                row[f"{name}_ttft_p50_ms"] = statistics.median(t for r in results for t in r["ttft"]) * 1000
            row["miner_own_p50_ms"] = statistics.median(t for r in runs["miner"] for t in r["own_ms"])
            pairs = list(zip(runs["direct"], runs["miner"]))
            row["throughput_ratio"] = statistics.median(m["tokens_per_s"] / d["tokens_per_s"] for d, m in pairs)
            row["added_ttft_p50_ms"] = statistics.median((statistics.median(m["ttft"]) - statistics.median(d["ttft"])) * 1000 for d, m in pairs)
            rows.append(row)
            print(f"  {label}, concurrency {concurrency}: done", file=sys.stderr)
    return rows


def print_table(rows: list[dict]) -> None:
    header = [
        "upstream",
        "concurrency",
        "direct tok/s",
        "miner tok/s",
        "throughput ratio",
        "direct TTFT p50 ms",
        "miner TTFT p50 ms",
        "added TTFT p50 ms",
        "miner's own work p50 ms",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [
            r["upstream"],
            r["concurrency"],
            f"{r['direct_tokens_per_s']:.0f}",
            f"{r['miner_tokens_per_s']:.0f}",
            f"{r['throughput_ratio']:.3f}",
            f"{r['direct_ttft_p50_ms']:.2f}",
            f"{r['miner_ttft_p50_ms']:.2f}",
            f"{r['added_ttft_p50_ms']:+.2f}",
            f"{r['miner_own_p50_ms']:.3f}",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def serve_fake(port: int, model_id: str, token_ms: float) -> None:
    """The stand-in upstream: vLLM's routes and event shapes, a fixed pace, no model."""
    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model_id, "object": "model", "max_model_len": 1024}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        max_tokens = json.loads(await request.read())["max_tokens"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(max_tokens):
            event = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "model": model_id,
                "choices": [{"index": 0, "delta": {"content": " word"}, "logprobs": None, "finish_reason": None, "token_ids": [100 + i]}],
            }
            await response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
            await asyncio.sleep(token_ms / 1000)
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_miner(tmp: Path, model: Path, engine_url: str, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    miner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "neurons.cli",
            "miner",
            "--network",
            f"localnet:{tmp / 'chain'}",
            "--netuid",
            "1",
            "--wallet-path",
            str(tmp / "wallets"),
            "--wallet-name",
            "miner",
            "--model",
            str(model),
            "--engine-url",
            engine_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--capacity",
            "64",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, miner, timeout=120)
    return miner, url


def run_against(args, tmp: Path, model: Path, manifest: ModelManifest, label: str, command: list[str], url: str, env: dict, wallets: tuple) -> list[dict]:
    """Start ``command`` (an upstream at ``url``) and a miner attached to it; measure both paths."""
    miner_wallet, caller = wallets
    log = open(tmp / f"{label}.log", "w")
    upstream = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    miner = None
    try:
        wait_healthy(url, upstream)
        miner, miner_url = start_miner(tmp, model, url, log)
        return asyncio.run(measure(args, url, miner_url, manifest.id, caller.hotkey, miner_wallet.hotkey.ss58_address, label))
    finally:
        if miner is not None:
            stop(miner)
        stop(upstream)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model folder with slmnet.json (default: build the tiny model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=8, help="alternating direct/miner rounds per concurrency")
    parser.add_argument("--requests-per-slot", type=int, default=1)
    parser.add_argument("--min-requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--fake-token-ms", type=float, default=5.0, help="pace of the stand-in upstream")
    parser.add_argument("--upstreams", nargs="+", default=["vllm", "stand-in"], choices=["vllm", "stand-in"])
    parser.add_argument("--serve-fake", nargs=2, default=None, metavar=("PORT", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = parser.parse_args()
    if args.serve_fake:
        return serve_fake(int(args.serve_fake[0]), args.serve_fake[1], args.fake_token_ms)

    rows = []
    with tempfile.TemporaryDirectory(prefix="slmnet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model, manifest = model_or_tiny(args.model, tmp)
        wallets = make_subnet(tmp)
        env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="2", TMPDIR=str(tmp))
        if "vllm" in args.upstreams:
            print("starting the engine (about a minute on 2 cores)", file=sys.stderr)
            spec = EngineSpec(model=str(model), served_name=manifest.id, port=free_port(), dtype="float32", max_model_len=1024)
            rows += run_against(args, tmp, model, manifest, "vllm", spec.command(), spec.url, spec.environment(env), wallets)
        if "stand-in" in args.upstreams:
            port = free_port()
            command = [sys.executable, __file__, "--serve-fake", str(port), manifest.id, "--fake-token-ms", str(args.fake_token_ms)]
            rows += run_against(args, tmp, model, manifest, "stand-in", command, f"http://127.0.0.1:{port}", env, wallets)

    print_table(rows)
    if args.json:
        figures = {"model": manifest.id, "max_tokens": args.max_tokens, "rounds": args.rounds, "levels": rows}
        for r in rows:
            key = f"{r['upstream'].replace('-', '_')}_c{r['concurrency']}"
            figures[f"{key}_throughput_ratio"] = r["throughput_ratio"]
            figures[f"{key}_added_ttft_p50_ms"] = r["added_ttft_p50_ms"]
        print(json.dumps(figures))


def make_subnet(tmp: Path) -> tuple:
    """A localnet with a registered miner and a staked caller (validator permit)."""
    admin.init(tmp / "chain", tempo=100, block_time=0.25)
    miner_wallet = bt.wallets.create("miner", "default", path=str(tmp / "wallets"), use_password=False, on_mnemonic=lambda *_: None)
    caller = bt.wallets.create("caller", "default", path=str(tmp / "wallets"), use_password=False, on_mnemonic=lambda *_: None)
    for wallet in (miner_wallet, caller):
        admin.fund(tmp / "chain", wallet.coldkeypub.ss58_address, 5000)

    async def register() -> None:
        async with chain.connect(f"localnet:{tmp / 'chain'}") as c:
            for wallet in (miner_wallet, caller):
                (await c.register(wallet, 1)).raise_for_failure()

    asyncio.run(register())
    admin.stake(tmp / "chain", caller.coldkeypub.ss58_address, caller.hotkey.ss58_address, 2000)
    return miner_wallet, caller


if __name__ == "__main__":
    main()

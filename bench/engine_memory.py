"""An engine worker's memory under varied traffic: vLLM as shipped, and as slmnet starts it.

The up soak saw a SmolLM2 engine's worker grow 650 MB in 25 minutes (2.5× its KV cache)
while every slmnet process stayed flat. This starts the engine as `slmnet up` does
(SmolLM2, fp32, eager, 256 MiB of KV cache, the verifiable sampler) once per
configuration: ``vllm`` as shipped (oneDNN's primitive cache at its default of 1024, the
worker bound to its cores), and ``slmnet`` with the engine environment slmnet gives every
engine (``EngineSpec.environment``: the cache off, the worker unbound). It drives each with
the mix a serving engine sees: validator-like challenges (seeded, logprobs, prompts of 5 to
600 words), users' short questions, greedy answers, whole and streamed, ``--concurrency``
at a time. Every 10 s it samples the
worker's RSS; growth is the least-squares slope after the first fifth of the run.

    python -m bench.engine_memory [--minutes 6] [--json]

``--json`` ends with one JSON object: ``rss_growth_ratio`` is slmnet's growth over vLLM's,
``throughput_ratio`` its tokens a second over vLLM's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench._common import free_port, stop, stream_chat, wait_healthy
from engine import EngineSpec
from engine.vllm import ENGINE_ENV_DEFAULTS
from neurons.local_subnet import ENGINE_ARGS, QUESTION, SMOLLM2

CONFIGS = {"vllm": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "VLLM_CPU_OMP_THREADS_BIND": "auto"}, "slmnet": {}}
WORDS = "the river carried old stones past quiet towns where people spoke of harvests storms and distant cities".split()
SAMPLE_S = 10.0


def _request(rng: random.Random) -> dict[str, Any]:
    kind = rng.random()
    body: dict[str, Any] = {"model": SMOLLM2, "max_tokens": rng.randint(1, 96), "stream": rng.random() < 0.5}
    if kind < 0.5:  # a challenge: a long varied prompt, seeded sampling, logprobs
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 600)))
        body |= {"messages": [{"role": "user", "content": prompt}], "seed": rng.randrange(2**31), "temperature": 0.7, "logprobs": True}
    elif kind < 0.8:  # a user's short question
        body |= {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
    else:
        body |= {"messages": [{"role": "user", "content": f"Count from {rng.randint(1, 500)}."}], "temperature": 0}
    return body


async def _drive(url: str, seconds: float, concurrency: int, seed: int) -> tuple[int, int]:
    """Requests and completion tokens answered in ``seconds``."""
    done, tokens = 0, 0
    stop_at = time.monotonic() + seconds

    async def worker(rng: random.Random) -> None:
        nonlocal done, tokens
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            while time.monotonic() < stop_at:
                body = _request(rng)
                if body["stream"]:
                    body["stream_options"] = {"include_usage": True}
                    events = await stream_chat(session, url, body)
                    usage = next((e["usage"] for e in events if e.get("usage")), None)
                else:
                    async with session.post(url + "/v1/chat/completions", json=body) as response:
                        usage = (await response.json()).get("usage")
                done += 1
                tokens += (usage or {}).get("completion_tokens", 0)

    await asyncio.gather(*(worker(random.Random(seed * 1000 + i)) for i in range(concurrency)))
    return done, tokens


def _worker_rss(engine: psutil.Process) -> int:
    """RSS of the engine's largest descendant (vLLM's model worker)."""
    sizes = []
    for child in engine.children(recursive=True):
        try:
            sizes.append(child.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return max(sizes, default=0)


def _slope_per_hour(samples: list[tuple[float, float]]) -> float:
    n = len(samples)
    mean_t, mean_v = sum(t for t, _ in samples) / n, sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return sum((t - mean_t) * (v - mean_v) for t, v in samples) / var * 3600 if var else 0.0


def run(config: str, model: Path, minutes: float, concurrency: int, tmp: Path) -> dict[str, Any]:
    spec = EngineSpec(
        model=str(model), served_name=SMOLLM2, port=free_port(), dtype="float32", max_model_len=4096, extra_args=ENGINE_ARGS, env=tuple(CONFIGS[config].items())
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TMPDIR=str(tmp))
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override --kv-cache-memory-bytes
    for name in ENGINE_ENV_DEFAULTS:  # slmnet's own, not whatever this shell sets
        env.pop(name, None)
    with open(tmp / f"engine-{config}.log", "w") as log:
        process = subprocess.Popen(spec.command(), env=spec.environment(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(spec.url, process)
        engine = psutil.Process(process.pid)
        samples: list[tuple[float, float]] = []
        began = time.monotonic()

        async def sampled() -> tuple[int, int]:
            drive = asyncio.create_task(_drive(spec.url, minutes * 60, concurrency, seed=1))
            while not drive.done():
                samples.append((time.monotonic() - began, _worker_rss(engine) / 2**20))
                await asyncio.wait([drive], timeout=SAMPLE_S)
            return drive.result()

        requests, tokens = asyncio.run(sampled())
        elapsed = time.monotonic() - began
    finally:
        stop(process)
    steady = [s for s in samples if s[0] >= minutes * 60 / 5]
    return {
        "config": config,
        "requests": requests,
        "tokens_per_s": tokens / elapsed,
        "rss_first_mb": steady[0][1],
        "rss_last_mb": steady[-1][1],
        "growth_mb_per_h": _slope_per_hour(steady),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="of traffic per configuration")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from models.prepare import default_cache_dir, prepare

    model, _ = prepare("smollm2-135m", default_cache_dir())
    with tempfile.TemporaryDirectory(prefix="engine-memory-") as tmp:
        results = {config: run(config, model, args.minutes, args.concurrency, Path(tmp)) for config in CONFIGS}
    print(f"SmolLM2 engine as `slmnet up` starts it; {args.concurrency} requests at a time, {args.minutes:g} min each")
    print(f"{'config':<8} {'requests':>8} {'tok/s':>7} {'worker RSS (MB)':>17} {'growth MB/h':>12}")
    for r in results.values():
        print(
            f"{r['config']:<8} {r['requests']:>8} {r['tokens_per_s']:>7.1f} {r['rss_first_mb']:>7.0f} → {r['rss_last_mb']:<7.0f} {r['growth_mb_per_h']:>+12.0f}"
        )
    if args.json:
        vllm, ours = results["vllm"], results["slmnet"]
        ratios = {"rss_growth_ratio": ours["growth_mb_per_h"] / vllm["growth_mb_per_h"], "throughput_ratio": ours["tokens_per_s"] / vllm["tokens_per_s"]}
        print(json.dumps({"minutes": args.minutes, "concurrency": args.concurrency, "results": list(results.values()), **ratios}))


if __name__ == "__main__":
    main()

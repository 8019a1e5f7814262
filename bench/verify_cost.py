"""What verification costs: teacher-forcing a response against generating it, on one engine.

Starts the real vLLM CPU engine (the tiny model unless --model is given), generates the
answers to a round of challenges (streamed, as a miner would), then verifies each with
``validator.verify`` (own tokenization + one prefill pass with prompt_logprobs), one
request at a time so the two costs are comparable. Prints per-challenge-size figures and
the overall ratio.

    python bench/verify_cost.py [--challenges 32] [--max-tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import model_or_tiny, start_engine, stop, stream_chat  # noqa: E402
from validator.challenges import generate  # noqa: E402
from validator.verify import ReferenceEngine, collect, verify  # noqa: E402


async def run(args: argparse.Namespace, url: str, model_id: str) -> list[dict]:
    rows = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        reference = ReferenceEngine(session, url, model_id)
        for challenge in generate(seed=args.seed, count=args.challenges):
            body = {**challenge.request(model_id), "max_tokens": args.max_tokens, "ignore_eos": True}
            started = time.perf_counter()
            events = await stream_chat(session, url, body)
            generated = time.perf_counter() - started
            answer = collect(events)
            started = time.perf_counter()
            verdict = await verify(reference, body, answer)
            verified = time.perf_counter() - started
            rows.append({"tokens": len(answer.token_ids), "generate_s": generated, "verify_s": verified, "passed": verdict.passed})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model folder with slmnet.json (default: build the tiny model)")
    parser.add_argument("--challenges", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slmnet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model, manifest = model_or_tiny(args.model, tmp)
        print("starting the engine (about a minute on 2 cores)", file=sys.stderr)
        engine, url = start_engine(model, manifest.id, tmp, max_model_len=2048, kv_gib=2)
        try:
            rows = asyncio.run(run(args, url, manifest.id))
        finally:
            stop(engine)

    generate_s, verify_s = sum(r["generate_s"] for r in rows), sum(r["verify_s"] for r in rows)
    ratios = [r["verify_s"] / r["generate_s"] for r in rows]
    figures = {
        "model": manifest.id, "challenges": len(rows), "tokens_per_answer": statistics.median(r["tokens"] for r in rows),
        "generate_p50_ms": statistics.median(r["generate_s"] for r in rows) * 1000, "verify_p50_ms": statistics.median(r["verify_s"] for r in rows) * 1000,
        "verify_to_generate_ratio": verify_s / generate_s, "per_answer_ratio_p90": statistics.quantiles(ratios, n=10)[-1] if len(ratios) > 1 else ratios[0],
        "all_honest_passed": all(r["passed"] for r in rows),
    }
    print("| model | answers | tokens each | generate p50 ms | verify p50 ms | verify / generate | p90 per answer | honest passed |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {figures['model']} | {figures['challenges']} | {figures['tokens_per_answer']:.0f} | {figures['generate_p50_ms']:.1f} | {figures['verify_p50_ms']:.1f} "
          f"| {figures['verify_to_generate_ratio']:.3f} | {figures['per_answer_ratio_p90']:.3f} | {figures['all_honest_passed']} |")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

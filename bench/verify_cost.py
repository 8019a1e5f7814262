"""What verification costs: teacher-forcing a response against generating it, on one engine.

Starts the real vLLM CPU engine (the tiny model unless --model is given), generates the
answers to a round of challenges (streamed, as a miner would), then verifies each with
``validator.verify`` (own tokenization + one prefill pass with prompt_logprobs), one
request at a time so the two costs are comparable. Prints per-challenge-size figures and
the overall ratio.

Then times whole validator rounds (``validator.rounds.run_round``: signed streamed
queries, arrival times, verification, scores) against 8, 32 and 128 simulated miners:
one stand-in process replays the engine's own honest answers to the round's challenges
at ``--miner-tokens-per-s`` per stream, on one path per miner, so what is measured is the
validator's side (querying, verifying on the reference engine, scoring).

    python -m bench.verify_cost [--challenges 32] [--max-tokens 128] [--miners 8,32,128] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from bittensor.sp_core import Keypair

from bench._common import free_port, model_or_tiny, start_engine, stop, stream_chat
from models import subnet as model_list
from models.tokenizer import ModelTokenizer
from validator.challenges import generate
from validator.records import RoundInputs, Target
from validator.rounds import run_round
from validator.verify import ReferenceEngine, collect, verify

ROUND_SEED = 404


def _conversation_key(messages: list) -> str:
    return json.dumps(messages, sort_keys=True)


def _serve_replay(answers_path: str, port: int, tokens_per_s: float) -> None:
    """The simulated miners (a child process): replays recorded answers, one chunk per token."""
    answers = json.loads(Path(answers_path).read_text())

    async def chat(request: web.Request) -> web.StreamResponse:
        events = answers[_conversation_key((await request.json())["messages"])]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            if any(c.get("token_ids") for c in event.get("choices") or []):
                await asyncio.sleep(1 / tokens_per_s)
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/{miner}/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def time_rounds(args: argparse.Namespace, url: str, model: Path, model_id: str, tmp: Path) -> list[dict]:
    """Record honest answers to the round's challenges, then run rounds against simulated miners."""
    challenges = generate(ROUND_SEED, args.round_challenges)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        answers = {_conversation_key(c.body["messages"]): await stream_chat(session, url, c.request(model_id)) for c in challenges}
    (tmp / "answers.json").write_text(json.dumps(answers))
    port = free_port()
    replay = multiprocessing.get_context("spawn").Process(target=_serve_replay, args=(str(tmp / "answers.json"), port, args.miner_tokens_per_s), daemon=True)
    replay.start()
    keypair = Keypair.create_from_uri("//slmnet-bench")
    supported = model_list.load().get(model_id)
    rows = []
    try:
        await asyncio.sleep(3)  # the replay server's start
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=3)) as session:
            references = {model_id: ReferenceEngine(session, url, model_id, ModelTokenizer(model), supported.end_token_ids if supported else ())}
            for miners in args.miners:
                targets = [Target(uid, keypair.ss58_address, f"http://127.0.0.1:{port}/m{uid}", model_id, 4) for uid in range(miners)]
                started = time.perf_counter()
                report = await run_round(session, keypair, RoundInputs(seed=ROUND_SEED), targets, references, args.round_challenges)
                elapsed = time.perf_counter() - started
                verified = [r for r in report.results if r.outcome.fidelity_passed is not None]
                rows.append(
                    {
                        "miners": miners,
                        "answers": len(report.results),
                        "round_s": elapsed,
                        "verified": len(verified),
                        "passed": sum(bool(r.outcome.fidelity_passed) for r in verified),
                        "answers_per_s": len(report.results) / elapsed,
                    }
                )
    finally:
        replay.terminate()
        replay.join()
    return rows


async def run(args: argparse.Namespace, url: str, model: Path, model_id: str) -> list[dict]:
    rows = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        reference = ReferenceEngine(session, url, model_id, ModelTokenizer(model))
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
    parser.add_argument("--miners", type=lambda v: [int(x) for x in v.split(",")], default=[8, 32, 128], help="simulated miner counts to time a round for")
    parser.add_argument("--round-challenges", type=int, default=4, help="challenges per miner in a timed round")
    parser.add_argument("--miner-tokens-per-s", type=float, default=200.0, help="each simulated miner's streaming rate")
    parser.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slmnet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model, manifest = model_or_tiny(args.model, tmp)
        print("starting the engine (about a minute on 2 cores)", file=sys.stderr)
        engine, url = start_engine(model, manifest.id, tmp, max_model_len=2048, kv_gib=2)
        try:
            rows = asyncio.run(run(args, url, model, manifest.id))
            round_rows = asyncio.run(time_rounds(args, url, model, manifest.id, tmp)) if args.miners else []
        finally:
            stop(engine)

    generate_s, verify_s = sum(r["generate_s"] for r in rows), sum(r["verify_s"] for r in rows)
    ratios = [r["verify_s"] / r["generate_s"] for r in rows]
    figures = {
        "model": manifest.id,
        "challenges": len(rows),
        "tokens_per_answer": statistics.median(r["tokens"] for r in rows),
        "generate_p50_ms": statistics.median(r["generate_s"] for r in rows) * 1000,
        "verify_p50_ms": statistics.median(r["verify_s"] for r in rows) * 1000,
        "verify_to_generate_ratio": verify_s / generate_s,
        "per_answer_ratio_p90": statistics.quantiles(ratios, n=10)[-1] if len(ratios) > 1 else ratios[0],
        "all_honest_passed": all(r["passed"] for r in rows),
    }
    print("| model | answers | tokens each | generate p50 ms | verify p50 ms | verify / generate | p90 per answer | honest passed |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {figures['model']} | {figures['challenges']} | {figures['tokens_per_answer']:.0f} | {figures['generate_p50_ms']:.1f} | {figures['verify_p50_ms']:.1f} "
        f"| {figures['verify_to_generate_ratio']:.3f} | {figures['per_answer_ratio_p90']:.3f} | {figures['all_honest_passed']} |"
    )
    print()
    print("| simulated miners | answers | round s | answers / s | verified | passed |")
    print("|---|---|---|---|---|---|")
    for r in round_rows:
        print(f"| {r['miners']} | {r['answers']} | {r['round_s']:.1f} | {r['answers_per_s']:.1f} | {r['verified']} | {r['passed']} |")
        figures[f"round_{r['miners']}_miners_s"] = r["round_s"]
    if round_rows and round_rows[0]["round_s"] > 0:
        figures["round_largest_to_smallest_ratio"] = round_rows[-1]["round_s"] / round_rows[0]["round_s"]
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Calibrating the verifier: how honest and cheating miners' answers measure against the reference.

Starts the reference vLLM CPU engine (fp32) on the tiny model, then one engine at a
time for each variant, and has the variant answer the same seeded challenges (streamed,
as a miner would, at the challenges' own sampling parameters) before verifying every
answer against the reference with ``validator.verify``. Honest variants: the same
weights served by another engine process, answering one request at a time and 16 at
once (different batch shapes), and the same weights in bf16. Cheats: the weights with
Gaussian noise (1e-2 and 3e-2 of each tensor's std), rounded to int8 and int4 per row
(absmax), and another model of the same architecture (seed 1).

    python bench/calibrate_verifier.py [--challenges 48] [--json]

Prints, per variant: answers, pass rate, the mean and the largest per-answer mean |Δlp|,
the largest single-token |Δlp|, and the share of answers with an implausible token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import start_engine, stop, stream_chat  # noqa: E402
from models.tiny import build_tiny  # noqa: E402
from tests.harness.adversary import perturbed_copy  # noqa: E402
from models import subnet as model_list  # noqa: E402
from validator.challenges import generate  # noqa: E402
from validator.verify import ReferenceEngine, Vocabulary, collect, verify  # noqa: E402

MODEL = "slmnet/tiny-qwen2-s0"
END_TOKEN_IDS = model_list.load().get(MODEL).end_token_ids


def start(folder: Path, tmp: Path, dtype: str = "float32") -> tuple[subprocess.Popen, str]:
    return start_engine(folder, MODEL, tmp, dtype=dtype)


async def answer_and_verify(url: str, reference_url: str, vocabulary: Vocabulary, concurrency: int, challenges) -> list:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        reference = ReferenceEngine(session, reference_url, MODEL, vocabulary, END_TOKEN_IDS)
        slots = asyncio.Semaphore(concurrency)

        async def one(challenge):
            body = challenge.request(MODEL)
            async with slots:
                events = await stream_chat(session, url, body)
            return await verify(reference, body, collect(events))

        return list(await asyncio.gather(*(one(c) for c in challenges)))


def summarize(name: str, verdicts: list) -> dict:
    means = [v.mean_abs_dlp for v in verdicts if v.mean_abs_dlp is not None]
    maxes = [v.max_abs_dlp for v in verdicts if v.max_abs_dlp is not None]
    return {
        "variant": name,
        "answers": len(verdicts),
        "pass_rate": sum(v.passed for v in verdicts) / len(verdicts),
        "mean_abs_dlp": statistics.fmean(means) if means else None,
        "worst_answer_mean_abs_dlp": max(means) if means else None,
        "max_abs_dlp": max(maxes) if maxes else None,
        "implausible_share": sum(v.implausible_tokens > 0 for v in verdicts) / len(verdicts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--challenges", type=int, default=48)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["honest-c1", "honest-c16", "honest-bf16", "noise-1e-2", "noise-3e-2", "int8", "int4", "other-model"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    challenges = generate(args.seed, args.challenges)
    rows = []
    with tempfile.TemporaryDirectory(prefix="slmnet-calibrate-") as name:
        tmp = Path(name)
        build_tiny(tmp / "s0", seed=0)
        reference, reference_url = start(tmp / "s0", tmp)
        vocabulary = Vocabulary(tmp / "s0")
        try:
            for variant in args.variants:
                print(f"  {variant} …", file=sys.stderr)
                folder, dtype, concurrency = tmp / "s0", "float32", 1
                if variant == "honest-c16":
                    concurrency = 16
                elif variant == "honest-bf16":
                    dtype = "bfloat16"
                elif variant.startswith("noise-"):
                    folder = perturbed_copy(tmp / "s0", tmp / variant, "noise", float(variant.split("-", 1)[1]))
                elif variant in ("int8", "int4"):
                    folder = perturbed_copy(tmp / "s0", tmp / variant, variant)
                elif variant == "other-model":
                    build_tiny(tmp / "s1", seed=1)
                    folder = tmp / "s1"
                engine, url = start(folder, tmp, dtype)
                try:
                    rows.append(summarize(variant, asyncio.run(answer_and_verify(url, reference_url, vocabulary, concurrency, challenges))))
                finally:
                    stop(engine)
        finally:
            stop(reference)

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    print("| variant | answers | pass rate | mean abs Δlp | worst answer mean | max abs Δlp | answers with an implausible token |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['answers']} | {r['pass_rate']:.2f} | {fmt(r['mean_abs_dlp'], '.2e')} | {fmt(r['worst_answer_mean_abs_dlp'], '.2e')} "
            f"| {fmt(r['max_abs_dlp'], '.2e')} | {r['implausible_share']:.2f} |"
        )
    if args.json:
        print(json.dumps({"model": MODEL, "challenges": args.challenges, "variants": rows}))


if __name__ == "__main__":
    main()

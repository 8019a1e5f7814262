"""Calibrating the verifier: how honest and cheating miners' answers measure against the reference.

Starts the reference vLLM CPU engine (fp32), then for each variant the stack that answers:
another vLLM engine process (its own weights, dtype, threads), or transformers in this
process (a second inference stack), sampling seeded requests through the verifiable
sampler as ``slmnet miner`` does. Every variant answers the same seeded challenges at their
own sampling parameters; each answer is gathered once on the reference and judged with
every dtype's tolerance.

Honest: vLLM fp32 one request at a time, 16 at once, on one thread; vLLM bf16;
transformers fp32 and bf16. Cheats: int8, int4 (per row) and fp8 e4m3 (per tensor)
rounding; noise at 1e-3, 3e-3, 1e-2 × each tensor's std; the last 4 layers dropped;
sampling at 1.3× the temperature, ignoring top_p, or with the engine's own RNG; invented
logprobs; int4's tokens with logprobs re-scored by the declared model.

    python -m bench.calibrate_verifier [--model tiny|smollm2-135m] [--challenges 32]
        [--variants ...] [--dump FILE.jsonl] [--from-dump FILE.jsonl] [--json]

Prints one row per variant (see ``docs/calibration.md`` for the columns); ``--dump`` keeps
every answer's evidence so the table can be recomputed with other tolerances
(``--from-dump``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import aiohttp

from bench._common import start_engine, stop, stream_chat
from models import subnet as model_list
from models.tiny import build_tiny
from models.tokenizer import ModelTokenizer
from protocol.records import AnswerRecord
from scoring.evidence import TOLERANCES, SequentialParams, log_likelihood_ratio
from scoring.fidelity import ResponseEvidence, TokenEvidence, Verdict
from tests.harness.adversary import perturbed_copy
from validator.challenges import generate
from validator.verify import ReferenceEngine, collect, gather, judge

HONEST = ["fp32-c1", "fp32-c16", "fp32-t1", "bf16", "hf-fp32", "hf-bf16"]
CHEATS = ["int8", "int4", "fp8", "noise-1e-3", "noise-3e-3", "noise-1e-2", "drop-4", "hot", "no-top-p", "own-rng", "invented", "rescored-int4"]
ROUND = 6  # challenges a miner answers per round
SLOTS = 4  # requests a variant answers at once, unless it says otherwise


def prepare_model(name: str, tmp: Path) -> tuple[Path, str]:
    if name == "tiny":
        build_tiny(tmp / "s0", seed=0)
        return tmp / "s0", "slmnet/tiny-qwen2-s0"
    from models.prepare import PREPARED, default_cache_dir, prepare

    folder, _ = prepare(name, default_cache_dir())
    return folder, PREPARED[name].model_id


def start(folder: Path, model: str, tmp: Path, dtype: str = "float32", threads: Optional[str] = None):
    return start_engine(folder, model, tmp, dtype, max_model_len=2048, kv_gib=2, env={"VLLM_CPU_OMP_THREADS_BIND": threads} if threads else {})


class Transformers:
    """The second inference stack: transformers' forward pass, with the verifiable sampler's choice."""

    def __init__(self, folder: Path, dtype: str, end_ids: frozenset[int]):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()
        self.end_ids = end_ids

    def answer(self, prompt_ids: list[int], body: dict[str, Any], vocabulary: ModelTokenizer) -> AnswerRecord:
        from engine.sampling import Seeded, choose

        torch = self.torch
        temperature = body.get("temperature") or 0.0
        out: list[int] = []
        reported: list[Optional[float]] = []
        ids = torch.tensor([prompt_ids])
        past = None
        token_ids = torch.arange(len(vocabulary.tokenizer), dtype=torch.int64)
        with torch.no_grad():
            while len(out) < body["max_tokens"]:
                result = self.model(ids, past_key_values=past, use_cache=True)
                past = result.past_key_values
                logits = result.logits[0, -1].float()[: token_ids.numel()]
                if temperature == 0:
                    chosen = int(torch.argmax(logits))
                else:
                    chosen = choose(logits, Seeded(body["seed"], temperature, body.get("top_p", 1.0), 0, 0.0, out), token_ids)
                reported.append(float(torch.log_softmax(logits, dim=-1)[chosen]))
                out.append(chosen)
                if chosen in self.end_ids:
                    break
                ids = torch.tensor([[chosen]])
        finish = "stop" if out and out[-1] in self.end_ids else "length"
        return AnswerRecord(token_ids=out, logprobs=reported, text=vocabulary.decode(out), finish_reason=finish, completion_tokens=len(out))


def variant_setup(variant: str, folder: Path, tmp: Path) -> dict[str, Any]:
    """How a variant answers: which weights, dtype and threads its engine runs, how requests are changed."""
    setup: dict[str, Any] = {"folder": folder, "dtype": "float32", "slots": SLOTS, "threads": None, "body": lambda b: b, "stack": "vllm"}
    if variant == "fp32-c16":
        setup["slots"] = 16
    elif variant == "fp32-c1":
        setup["slots"] = 1
    elif variant == "fp32-t1":
        setup["threads"] = "0"
    elif variant == "bf16":
        setup["dtype"] = "bfloat16"
    elif variant.startswith("hf-"):
        setup.update(stack="transformers", dtype={"hf-fp32": "float32", "hf-bf16": "bfloat16"}[variant])
    elif variant.startswith("noise-"):
        setup["folder"] = perturbed_copy(folder, tmp / variant, "noise", float(variant.split("-", 1)[1]))
    elif variant in ("int8", "int4", "fp8") or variant == "rescored-int4":
        kind = "int4" if variant == "rescored-int4" else variant
        setup["folder"] = tmp / kind if (tmp / kind).exists() else perturbed_copy(folder, tmp / kind, kind)
    elif variant.startswith("drop-"):
        setup["folder"] = perturbed_copy(folder, tmp / variant, "drop", int(variant.split("-")[1]))
    elif variant == "hot":
        setup["body"] = lambda b: {**b, "temperature": b["temperature"] * 1.3}
    elif variant == "no-top-p":
        setup["body"] = lambda b: {**b, "top_p": 1.0}
    elif variant == "own-rng":
        setup["body"] = lambda b: {k: v for k, v in b.items() if k != "seed"}
    elif variant == "other-model":
        build_tiny(tmp / "s1", seed=1)
        setup["folder"] = tmp / "s1"
    return setup


async def answers_of(variant: str, setup: dict[str, Any], url: Optional[str], stack, reference: ReferenceEngine, challenges, model: str):
    """(request, evidence or failed verdict) for every challenge, as the validator gathers them."""
    slots = asyncio.Semaphore(setup["slots"])
    rng = random.Random(11)

    async def one(challenge):
        body = challenge.request(model)
        async with slots:
            if stack is not None:
                prompt = await reference.prompt_ids(body["messages"])
                response = await asyncio.to_thread(stack.answer, prompt, body, reference.tokenizer)
            else:
                response = collect(await stream_chat(reference.session, url, setup["body"](body)), body["max_tokens"])
        if variant == "invented":
            response = response.model_copy(update={"logprobs": [-rng.uniform(0, 3) for _ in response.token_ids]})
        if variant == "rescored-int4" and response.token_ids:
            prompt = await reference.prompt_ids(body["messages"])
            scored = await reference.score(prompt, response.token_ids)
            response = response.model_copy(update={"logprobs": [position[t][0] for t, position in zip(response.token_ids, scored)]})
        return body, await gather(reference, body, response)

    return list(await asyncio.gather(*(one(c) for c in challenges)))


def to_json(evidence: ResponseEvidence) -> dict[str, Any]:
    data = asdict(evidence)
    data["end_token_ids"] = sorted(evidence.end_token_ids)
    data["tokens"] = [{**asdict(t), "reference_top": {str(k): v for k, v in t.reference_top.items()}} for t in evidence.tokens]
    return data


def from_json(data: dict[str, Any]) -> ResponseEvidence:
    tokens = [TokenEvidence(**{**t, "reference_top": {int(k): v for k, v in t["reference_top"].items()}}) for t in data["tokens"]]
    return ResponseEvidence(**{**data, "tokens": tokens, "end_token_ids": frozenset(data["end_token_ids"])})


def quantile(values: list[float], q: float) -> Optional[float]:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else None


def summarize(variant: str, gathered: list[Optional[ResponseEvidence]], params: SequentialParams = SequentialParams()) -> dict[str, Any]:
    """One table row: hard failures, drift, and what the per-miner test makes of the answers."""
    evidences = [e for e in gathered if e is not None]
    row: dict[str, Any] = {"variant": variant, "answers": len(gathered), "unscorable": len(gathered) - len(evidences)}
    deltas = [abs(t.reported_logprob - t.reference_logprob) for e in evidences for t in e.tokens if t.reported_logprob is not None]
    row.update(dlp_p50=quantile(deltas, 0.5), dlp_p99=quantile(deltas, 0.99), dlp_max=max(deltas) if deltas else None)
    for dtype in ("float32", "bfloat16"):
        tolerance = TOLERANCES[dtype]
        verdicts = [judge(e, tolerance=tolerance) for e in evidences]
        hard = sum(not v.passed for v in verdicts) + row["unscorable"]
        stats = [v.stats for v in verdicts]
        tokens, mismatches = sum(s.tokens for s in stats), sum(s.mismatches for s in stats)
        reported, exceed = sum(s.reported for s in stats), sum(s.exceedances for s in stats)
        llrs = [log_likelihood_ratio(s, tolerance, params) for s in stats]
        cusum, flagged_at = 0.0, None
        for i, (verdict, llr) in enumerate(zip(verdicts, llrs)):
            cusum = max(0.0, cusum + llr)
            if flagged_at is None and (cusum >= params.threshold or not verdict.passed):  # a hard failure is at once
                flagged_at = i + 1
        mean_llr = statistics.fmean(llrs) if llrs else 0.0
        tag = "fp32" if dtype == "float32" else "bf16"
        row.update(
            {
                f"{tag}_hard_fail": hard / max(1, len(gathered)),
                f"{tag}_mismatch_rate": mismatches / tokens if tokens else None,
                f"{tag}_exceed_rate": exceed / reported if reported else None,
                f"{tag}_mean_llr": mean_llr,
                f"{tag}_mean_exp_llr": statistics.fmean(math.exp(x) for x in llrs) if llrs else None,
                f"{tag}_answers_to_flag": math.ceil(params.threshold / mean_llr) if mean_llr > 0 else None,  # by the statistics alone
                f"{tag}_flagged_at": flagged_at,  # in the order answered, hard failures included
            }
        )
    row["informative_per_answer"] = statistics.fmean(s.tokens for s in [judge(e).stats for e in evidences]) if evidences else 0
    return row


def table(rows: list[dict[str, Any]], threshold: float) -> str:
    def fmt(value, spec=".3g"):
        return "-" if value is None else format(value, spec)

    lines = [
        f"threshold h = {threshold:.1f} (false-positive rate {SequentialParams().false_positive_rate:g} per miner-day at {SequentialParams().answers_per_day:g} answers a day)",
        "",
        "| variant | answers | informative/answer | |Δlp| p50 | p99 | max | hard fail (fp32 / bf16 tol.) | mismatch rate fp32 / bf16 | exceedance rate fp32 / bf16 "
        "| mean llr/answer fp32 / bf16 | E[exp llr] bf16 | answers to flag by statistics, fp32 / bf16 (rounds of 6) | flagged at answer, fp32 / bf16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def flag(tag, r=r):
            n = r[f"{tag}_answers_to_flag"]
            return "never" if n is None else f"{n} ({math.ceil(n / ROUND)})"

        lines.append(
            f"| {r['variant']} | {r['answers']} | {r['informative_per_answer']:.0f} | {fmt(r['dlp_p50'], '.1e')} | {fmt(r['dlp_p99'], '.1e')} | {fmt(r['dlp_max'], '.2g')} "
            f"| {r['fp32_hard_fail']:.2f} / {r['bf16_hard_fail']:.2f} | {fmt(r['fp32_mismatch_rate'])} / {fmt(r['bf16_mismatch_rate'])} "
            f"| {fmt(r['fp32_exceed_rate'])} / {fmt(r['bf16_exceed_rate'])} | {r['fp32_mean_llr']:.2f} / {r['bf16_mean_llr']:.2f} | {fmt(r['bf16_mean_exp_llr'])} "
            f"| {flag('fp32')} / {flag('bf16')} | {r['fp32_flagged_at'] or 'never'} / {r['bf16_flagged_at'] or 'never'} |"
        )
    return "\n".join(lines)


async def run_variants(args, folder: Path, model: str, tmp: Path, dump) -> dict[str, list]:
    end_ids = frozenset(model_list.load().get(model).end_token_ids) if model_list.load().get(model) else frozenset()
    reference_process, reference_url = start(folder, model, tmp)
    vocabulary = ModelTokenizer(folder)
    challenges = generate(args.seed, args.challenges)
    gathered: dict[str, list] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
            reference = ReferenceEngine(session, reference_url, model, vocabulary, end_ids, max_context=2048)
            for variant in args.variants:
                print(f"  {variant} …", file=sys.stderr, flush=True)
                setup = variant_setup(variant, folder, tmp)
                process = url = stack = None
                if setup["stack"] == "transformers":
                    stack = Transformers(setup["folder"], setup["dtype"], end_ids)
                else:
                    process, url = start(setup["folder"], model, tmp, setup["dtype"], setup["threads"])
                try:
                    answers = await answers_of(variant, setup, url, stack, reference, challenges, model)
                finally:
                    if process is not None:
                        stop(process)
                gathered[variant] = [None if isinstance(e, Verdict) else e for _, e in answers]
                for _, e in answers:
                    dump.write(json.dumps({"variant": variant, "evidence": None if isinstance(e, Verdict) else to_json(e)}) + "\n")
                dump.flush()
    finally:
        stop(reference_process)
    return gathered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, or a prepared model (smollm2-135m)")
    parser.add_argument("--challenges", type=int, default=32)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=HONEST + CHEATS)
    parser.add_argument("--dump", type=Path, help="write every answer's evidence here (JSONL)")
    parser.add_argument("--from-dump", type=Path, help="recompute the table from a dump instead of running engines")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.from_dump:
        gathered: dict[str, list] = {}
        for line in args.from_dump.read_text().splitlines():
            record = json.loads(line)
            gathered.setdefault(record["variant"], []).append(None if record["evidence"] is None else from_json(record["evidence"]))
    else:
        with tempfile.TemporaryDirectory(prefix="slmnet-calibrate-") as name:
            tmp = Path(name)
            folder, model = prepare_model(args.model, tmp)
            with open(args.dump or os.devnull, "w") as dump:
                gathered = asyncio.run(run_variants(args, folder, model, tmp, dump))
    rows = [summarize(variant, evidences) for variant, evidences in gathered.items()]
    print(table(rows, SequentialParams().threshold))
    if args.json:
        print(json.dumps({"model": args.model, "challenges": args.challenges, "threshold": SequentialParams().threshold, "variants": rows}))


if __name__ == "__main__":
    main()

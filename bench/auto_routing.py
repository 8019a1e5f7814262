"""Does "auto" serve each request better than any one model? Measured through `slmnet up`'s gateway.

Starts `slmnet up` (or uses a running gateway: ``--url`` and ``--key``), waits until the
validator has graded at least ``--warmup-answers`` answers of every served model, then sends
one held-out set of checkable tasks through the gateway with each model pinned and with
each "auto" flavour, and prints accuracy, p50 and p90 latency (whole answers, wall clock at
the client) and tokens per answer side by side, with the models each flavour chose.

The tasks are the bench's own: other phrasings than the validators' (``HELD_OUT``), drawn
from a fresh seed, plus a family the validators never ask (capital cities), so neither
the classifier nor the routing figures have seen them. Every configuration gets the same
tasks, one request at a time, temperature 0, the configurations in turn for each task.

The cost of the choice itself (classify + choose over the gateway's own figures, read
from ``/api/quality``) is timed in this process over the same tasks.

    python -m bench.auto_routing [--tasks 21] [--url URL --key KEY] [--json]

``--json`` ends with one JSON object: per configuration its figures, and
``auto_accuracy_ratio_vs_best_single``, ``auto_latency_ratio_vs_best_single`` (the best single
model: the most accurate pinned one; latency ratios of p50s), the same for ``auto:best`` and
``auto:fast``, and ``choice_p99_ratio_vs_budget`` (the choice's p99 ÷ 0.2 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

from gateway.auto import FLAVOURS, AutoRouter, classify
from protocol.records import FamilyScore, MinerVerdict
from shell.net import free_port
from validator.challenges.tasks import Answer, grade

CHOICE_BUDGET_S = 0.2e-3
WORDS = "river candle ocean tiger planet garden window silver rocket forest bridge winter cloud pepper".split()
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Egypt": "Cairo", "Canada": "Ottawa",
    "Russia": "Moscow", "China": "Beijing", "Greece": "Athens", "Portugal": "Lisbon", "Norway": "Oslo", "Kenya": "Nairobi", "Peru": "Lima",
}  # fmt: skip


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS) if rng.random() < 0.5 else "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 9)))


def _sum(rng: random.Random) -> tuple[str, Answer]:
    a, b = rng.randint(2, 500), rng.randint(2, 500)
    return rng.choice(["Add {a} and {b}.", "What do you get from {a} + {b}?", "Tell me the sum {a} + {b}."]).format(a=a, b=b) + " Just the number.", Answer(
        "number", a + b
    )


def _reverse(rng: random.Random) -> tuple[str, Answer]:
    w = _word(rng)
    return rng.choice(["Write the word '{w}' reversed.", "Reverse the letters of '{w}'."]).format(w=w) + " Only the result.", Answer("text", w[::-1])


def _upper(rng: random.Random) -> tuple[str, Answer]:
    text = " ".join(rng.sample(WORDS, 2))
    return rng.choice(["Change '{t}' to uppercase.", "Uppercase this: '{t}'."]).format(t=text) + " Only the result.", Answer("text", text.upper())


def _sort(rng: random.Random) -> tuple[str, Answer]:
    numbers = rng.sample(range(1, 60), rng.randint(3, 5))
    return f"Sort {', '.join(map(str, numbers))} from smallest to largest. Comma-separated, nothing else.", Answer("numbers", sorted(numbers))


def _count(rng: random.Random) -> tuple[str, Answer]:
    w = _word(rng)
    letter = rng.choice(sorted(set(w)))
    return f"How many times does the letter '{letter}' occur in '{w}'? Just the number.", Answer("number", w.count(letter))


def _json(rng: random.Random) -> tuple[str, Answer]:
    name, age = rng.choice(["Ana", "Ben", "Chen", "Dara", "Eli"]), rng.randint(20, 70)
    return f'Write {{"name": ..., "age": ...}} as JSON for {name}, aged {age}. Only the JSON.', Answer("json", {"name": name, "age": age})


def _capital(rng: random.Random) -> tuple[str, Answer]:
    country = rng.choice(sorted(CAPITALS))
    return rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}."]).format(c=country), Answer(
        "text", CAPITALS[country]
    )


HELD_OUT: dict[str, Callable[[random.Random], tuple[str, Answer]]] = {
    "sum": _sum, "reverse": _reverse, "uppercase": _upper, "sort": _sort, "count": _count, "json": _json, "capital": _capital,
}  # fmt: skip


def tasks(count: int, seed: int) -> list[tuple[str, str, Answer]]:
    rng = random.Random(seed)
    names = sorted(HELD_OUT)
    return [(name, *HELD_OUT[name](rng)) for name in (names[i % len(names)] for i in range(count))]


def correct(answer: Answer, text: str) -> bool:
    """The validators' grading; a capital is right when its name begins the answer."""
    if answer.kind == "text" and answer.value in CAPITALS.values():
        return text.strip().lower().startswith(str(answer.value).lower()) or f" {str(answer.value).lower()}" in f" {text.strip().lower()[:40]}"
    return grade(answer, text) >= 1.0


def _call(url: str, key: str, path: str, body: Optional[dict] = None, timeout: float = 300, retries: int = 0) -> tuple[int, dict, Any]:
    """One request; a 503 (every miner of the model busy) is retried ``retries`` times after its
    Retry-After, as the OpenAI client does (the wait counts in the request's latency)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 503 and retries:
            time.sleep(float(exc.headers.get("Retry-After") or 1))
            return _call(url, key, path, body, timeout, retries - 1)
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def run_configs(url: str, key: str, configs: list[str], work: list[tuple[str, str, Answer]], max_tokens: int) -> list[dict[str, Any]]:
    """Each task sent once per configuration, the configurations in turn for each task (so a
    change in the machine's load over the run weighs on every configuration alike)."""
    seen: dict[str, dict[str, Any]] = {c: {"latencies": [], "right": 0, "tokens": [], "chosen": {}, "failed": 0} for c in configs}
    for _, prompt, answer in work:
        for config in configs:
            record = seen[config]
            body = {"model": config, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0}
            started = time.perf_counter()
            status, _, reply = _call(url, key, "/v1/chat/completions", body, retries=3)
            if status != 200:
                record["failed"] += 1
                continue
            record["latencies"].append(time.perf_counter() - started)
            record["right"] += correct(answer, reply["choices"][0]["message"]["content"] or "")
            record["tokens"].append(reply["usage"]["completion_tokens"])
            record["chosen"][reply["model"]] = record["chosen"].get(reply["model"], 0) + 1
    rows = []
    for config, record in seen.items():
        ordered = sorted(record["latencies"])
        rows.append(
            {
                "model": config,
                "accuracy": record["right"] / len(work),
                "p50_s": statistics.median(ordered) if ordered else None,
                "p90_s": ordered[int(0.9 * (len(ordered) - 1))] if ordered else None,
                "tokens_per_answer": statistics.mean(record["tokens"]) if record["tokens"] else None,
                "failed": record["failed"],
                "chosen": record["chosen"],
            }
        )
    return rows


def choice_cost(quality: dict, work: list[tuple[str, str, Answer]], repeats: int = 200) -> tuple[float, float]:
    """p50 and p99 seconds of classify + choose, over the gateway's own figures."""
    auto = AutoRouter()
    verdicts = [
        MinerVerdict(
            uid=0, hotkey=m["id"], model=m["id"], standing="ok", answers=0, evidence=0.0,
            quality=[FamilyScore(family=f, answers=v["answers"], correct=v["correct"]) for f, v in m["families"].items()],
        )
        for m in quality["models"]
    ]  # fmt: skip
    auto.learn(verdicts)
    served = {m["id"]: 0.0 for m in quality["models"] if m["served"]}
    samples = []
    for _ in range(repeats):
        for _, prompt, _ in work:
            body = {"messages": [{"role": "user", "content": prompt}]}
            started = time.perf_counter()
            auto.choose("auto", classify(body), served, 64)
            samples.append(time.perf_counter() - started)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def start_up(root: Path, port: int) -> subprocess.Popen:
    log = open(root / "up.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "neurons.cli", "up", "--dir", str(root / "up"), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(url: str, key_of: Callable[[], Optional[str]], up: Optional[subprocess.Popen], warmup: int, timeout: float) -> tuple[str, dict]:
    """The API key, and /api/quality once every served model (two at least) has ``warmup`` graded answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if up is not None and up.poll() is not None:
            raise SystemExit(f"slmnet up exited with {up.returncode}: see its log")
        key = key_of()
        if key:
            try:
                status, _, quality = _call(url, key, "/api/quality")
            except (urllib.error.URLError, ConnectionError):  # the gateway is not listening yet
                status, quality = 0, {}
            served = [m for m in quality.get("models", []) if m["served"]] if status == 200 else []
            if len(served) >= 2 and all(m["graded_answers"] >= warmup for m in served):
                return key, quality
        time.sleep(5)
    raise SystemExit(f"not every served model had {warmup} graded answers within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=21, help="held-out tasks (the same for every configuration)")
    parser.add_argument("--seed", type=int, default=None, help="the tasks' seed (default: fresh from the OS)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--warmup-answers", type=int, default=8, help="graded answers every served model needs before the run")
    parser.add_argument("--url", help="a running gateway (default: start `slmnet up`)")
    parser.add_argument("--key", help="its API key (with --url)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    work = tasks(args.tasks, seed)
    up = None
    tmp = Path(tempfile.mkdtemp(prefix="slmnet-auto-"))
    try:
        if args.url:
            url, key_of = args.url.rstrip("/"), lambda: args.key
        else:
            port = free_port()
            url, up = f"http://127.0.0.1:{port}", start_up(tmp, port)
            key_of = _key_maker(tmp / "up" / "gateway.sqlite")
        key, quality = wait_for(url, key_of, up, args.warmup_answers, args.timeout)
        served = sorted(m["id"] for m in quality["models"] if m["served"])
        rows = run_configs(url, key, [*served, *FLAVOURS], work, args.max_tokens)
        _, _, quality = _call(url, key, "/api/quality")
    finally:
        if up is not None:
            import signal

            os.killpg(up.pid, signal.SIGINT)
            up.wait(timeout=180)
    p50, p99 = choice_cost(quality, work)
    singles = [r for r in rows if r["model"] in served]
    best = max(singles, key=lambda r: (r["accuracy"], -(r["p50_s"] or 1e9)))
    result: dict[str, Any] = {
        "seed": seed,
        "tasks": len(work),
        "rows": rows,
        "best_single": best["model"],
        "choice_p50_ms": p50 * 1e3,
        "choice_p99_ms": p99 * 1e3,
    }
    result["graded_answers"] = {m["id"]: m["graded_answers"] for m in quality["models"]}
    for flavour in FLAVOURS:
        row = next(r for r in rows if r["model"] == flavour)
        name = flavour.replace(":", "_")
        result[f"{name}_accuracy_ratio_vs_best_single"] = row["accuracy"] / best["accuracy"] if best["accuracy"] else None
        result[f"{name}_latency_ratio_vs_best_single"] = row["p50_s"] / best["p50_s"] if row["p50_s"] and best["p50_s"] else None
    result["choice_p99_ratio_vs_budget"] = p99 / CHOICE_BUDGET_S
    print(f"{len(work)} held-out tasks (seed {seed}), graded answers behind the figures: {result['graded_answers']}")
    print(f"{'configuration':34} {'accuracy':>8} {'p50 s':>7} {'p90 s':>7} {'tokens':>7} {'failed':>6}  chose")
    for r in rows:
        p50s, p90s, toks = (f"{r[k]:.2f}" if r[k] is not None else "–" for k in ("p50_s", "p90_s", "tokens_per_answer"))
        print(f"{r['model']:34} {r['accuracy']:>8.3f} {p50s:>7} {p90s:>7} {toks:>7} {r['failed']:>6}  {r['chosen']}")
    print(f"choice (classify + choose): p50 {p50 * 1e6:.1f} µs, p99 {p99 * 1e6:.1f} µs (budget 200 µs)")
    if args.json:
        print(json.dumps(result))


def _key_maker(db: Path) -> Callable[[], Optional[str]]:
    """A key in `slmnet up`'s gateway ledger, made once the gateway has created it."""
    made: list[str] = []

    def key() -> Optional[str]:
        if made:
            return made[0]
        if not db.exists():
            return None
        from gateway.store import Store

        try:
            made.append(Store(db).create_key("bench-auto-routing")[0])
        except Exception:  # the gateway is still creating its schema
            return None
        return made[0]

    return key


if __name__ == "__main__":
    main()

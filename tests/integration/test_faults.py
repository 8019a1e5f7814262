"""SIGKILL of the real `slmnet validator` at its worst moments and at random ones, then restarts.

Two honest `slmnet miner`s on the shared tiny engine, a validator attached to the same
engine as its reference, on a localnet. The validator is killed (SIGKILL: no cleanup, no
flush) at each crash point of ``validator.crashpoints`` and at random moments of its
rounds, and started again on the same state each time, until it has run its rounds.
Then the state must read as if nothing had happened: every round stored once, whole, in
order; the journal holds each once; the standings equal the fold of the stored rounds
(what an uninterrupted validator computes from those rounds); a replay of the last round
reproduces it; and weights the chain accepted before a kill stand.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

import chain
from models import subnet
from models.tiny import build_tiny
from scoring.aggregate import AggregationParams, Standing, update
from tests.harness.localnet import make_localnet
from tests.harness.processes import create_key, engine_env, start_gateway, start_miners
from validator.crashpoints import ENV

pytestmark = pytest.mark.slow
MODEL = "slmnet/tiny-qwen2-s0"
STREAM_TOKENS_PER_S = subnet.load(subnet.for_network("localnet:")).get(MODEL).stream_tokens_per_s
MINERS = ("honest1", "honest2")
CHALLENGES = 4
ROUNDS = 7


@pytest.fixture(scope="module")
def subnet(tmp_path_factory, tiny_engine):
    tmp = tmp_path_factory.mktemp("faults")
    build_tiny(tmp / "s0", seed=0)
    net = make_localnet(tmp)
    wallets, uids = net.register((*MINERS, "validator", "gateway"))
    net.stake(wallets["validator"], 2000)
    net.stake(wallets["gateway"], 2000)
    servers = []
    try:
        start_miners(net, {name: tiny_engine.url for name in MINERS}, tmp / "s0", tmp, servers)
        yield {"tmp": tmp, "net": net, "uids": uids, "wallets": wallets, "engine": tiny_engine}
    finally:
        for server in reversed(servers):
            server.stop()


def _args(subnet, state: str = "validator", rounds: int = ROUNDS) -> list[str]:
    tmp = subnet["tmp"]
    return [
        *subnet["net"].flags("validator"),
        "--state-dir",
        str(tmp / state),
        "--reference",
        f"{MODEL}={subnet['engine'].url}",
        "--tokenizer",
        f"{MODEL}={tmp / 's0'}",
        "--challenges-per-miner",
        str(CHALLENGES),
        "--probe-concurrency",  # a probe round sends as many challenges as the others: CHALLENGES a round
        str(CHALLENGES // 2),
        "--round-interval",
        "1",
        "--weights-interval",
        "1",
        "--max-rounds",
        str(rounds),
    ]


def _run(subnet, crash_at: str | None = None, kill_after: float | None = None) -> int:
    """One life of the validator: to a crash point, to a SIGKILL ``kill_after`` s in, or to the end."""
    env = engine_env(subnet["tmp"]) | ({ENV: crash_at} if crash_at else {})
    log = (subnet["tmp"] / "validator.log").open("a")
    process = subprocess.Popen([sys.executable, "-m", "neurons.cli", "validator", *_args(subnet)], stdout=log, stderr=log, env=env)
    if kill_after is not None:
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
    return process.wait(timeout=600)


def _stored_rounds(subnet) -> list[int]:
    db = sqlite3.connect(subnet["tmp"] / "validator" / "validator.sqlite")
    return [r for (r,) in db.execute("SELECT round FROM rounds ORDER BY round")]


def test_a_validator_killed_anywhere_restarts_with_every_round_stored_once_and_the_same_standings(subnet, figure):
    tmp, uids = subnet["tmp"], subnet["uids"]
    state = tmp / "validator"
    # Killed after the chain accepted its weights, before it wrote them down.
    assert _run(subnet, crash_at="weights-accepted") == -signal.SIGKILL
    assert _stored_rounds(subnet) == [0]
    db = sqlite3.connect(state / "validator.sqlite")
    assert db.execute("SELECT COUNT(*) FROM weights").fetchone() == (0,)

    async def chain_weights() -> dict[int, float]:
        async with chain.connect(subnet["net"].network) as c:
            graph = await c.metagraph(1)
            return {n.uid: n.last_update for n in graph.neurons}

    assert asyncio.run(chain_weights())[uids["validator"]] > 0  # the chain has them all the same
    # Killed after a round was committed, before it reached the journal.
    assert _run(subnet, crash_at="round-stored") == -signal.SIGKILL
    assert _stored_rounds(subnet) == [0, 1]
    # Killed at random moments (a round takes ~2-4 s here: mostly mid-round, sometimes between rounds or mid-weights).
    rng = random.Random()
    kills = [rng.uniform(3.0, 9.0) for _ in range(2)]
    for delay in kills:
        assert _run(subnet, kill_after=delay) in (-signal.SIGKILL, 0)
    assert _run(subnet) == 0, (tmp / "validator.log").read_text()[-3000:]

    # Every round once, whole, in order.
    assert _stored_rounds(subnet) == list(range(ROUNDS))
    counts = dict(db.execute("SELECT round, COUNT(*) FROM results GROUP BY round").fetchall())
    assert counts == {r: len(MINERS) * CHALLENGES for r in range(ROUNDS)}
    journal = [json.loads(line)["round"] for line in (state / "rounds.jsonl").read_text().splitlines()]
    assert journal == list(range(ROUNDS))  # the round the kill kept out of the journal was appended on restart
    # The standings are the fold of the stored rounds, each counted once.
    standings: dict[str, Standing] = {}
    for (summary_json,) in db.execute("SELECT summary FROM rounds ORDER BY round"):
        summary = json.loads(summary_json)
        for uid, score in summary["scores"].items():
            hotkey = summary["targets"][uid][0]
            reset = int(uid) in summary["buffered"] or int(uid) in summary["flagged"]
            failed, delivered = int(uid) in summary["fidelity_failed"], summary["delivered"].get(uid)
            streams = None if delivered is None else delivered / STREAM_TOKENS_PER_S  # in streams at the model's reference speed
            standings[hotkey] = update(standings.get(hotkey, Standing()), score, failed, summary["round"], AggregationParams(), reset, streams)
    rows = db.execute("SELECT hotkey, ema, rounds, banned_until, capacity FROM standings")
    stored = {hotkey: Standing(ema, rounds, banned, capacity) for hotkey, ema, rounds, banned, capacity in rows}
    assert stored == standings and all(s.rounds == ROUNDS and s.ema > 0 and s.capacity > 0 for s in stored.values())
    assert db.execute("SELECT COUNT(*) FROM weights").fetchone()[0] >= 1  # weights set again after the restarts
    # Anyone can recheck the last round from the state: the replay reproduces it.
    replay = [sys.executable, "-m", "neurons.cli", "validator", "replay", *_args(subnet), "--round", str(ROUNDS - 1)]
    done = subprocess.run(replay, capture_output=True, text=True, timeout=600, env=engine_env(tmp))
    assert done.returncode == 0 and "reproduced" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    when = f"at weights-accepted, round-stored, and {', '.join(f'{k:.1f} s' for k in kills)} into a life"
    figure(f"validator SIGKILLed {when}", f"{ROUNDS} of {ROUNDS} rounds stored once, whole; 0 lost, 0 twice; standings = fold of the rounds; replay reproduced")


def _chain_outage(subnet, seconds: float, figure) -> None:
    """The chain unreachable for ``seconds`` (the localnet's OFFLINE switch: every call fails
    as against a node that does not answer) under a running validator, gateway and miners."""
    tmp, net = subnet["tmp"], subnet["net"]
    db = tmp / f"gateway-outage-{seconds:g}.sqlite"
    key = create_key(db, "outage")
    gateway = start_gateway(net, "gateway", db, f"{MODEL}={tmp / 's0'}", tmp)
    state = f"validator-outage-{seconds:g}"
    log = (tmp / f"{state}.log").open("w")
    validator = subprocess.Popen(
        [sys.executable, "-m", "neurons.cli", "validator", *_args(subnet, state, rounds=10**6)], stdout=log, stderr=log, env=engine_env(tmp)
    )
    store = tmp / state / "validator.sqlite"

    def weights_blocks() -> list[int]:
        if not store.exists():
            return []
        return [b for (b,) in sqlite3.connect(store).execute("SELECT block FROM weights ORDER BY block")]

    def ask() -> int:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
        request = urllib.request.Request(gateway.url + "/v1/chat/completions", data=body, headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.monotonic() + 120
        while not weights_blocks() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert weights_blocks(), (tmp / f"{state}.log").read_text()[-3000:]
        (net.dir / "OFFLINE").touch()
        went_down, statuses = time.monotonic(), []
        while time.monotonic() - went_down < seconds:
            statuses.append(ask())
            time.sleep(0.5)
        during = weights_blocks()
        assert validator.poll() is None, (tmp / f"{state}.log").read_text()[-3000:]  # kept its loop
        (net.dir / "OFFLINE").unlink()
        came_back = time.monotonic()
        while weights_blocks() == during and time.monotonic() - came_back < 120:
            time.sleep(0.5)
        recovered = time.monotonic() - came_back
        assert weights_blocks() != during, (tmp / f"{state}.log").read_text()[-3000:]  # weights set once it was back
        assert ask() == 200
    finally:
        (net.dir / "OFFLINE").unlink(missing_ok=True)
        validator.send_signal(signal.SIGTERM)
        code = validator.wait(timeout=120)
        gateway.stop()
    text = (tmp / f"{state}.log").read_text()
    skipped = text.count("round skipped: the chain failed")
    figure(
        f"chain unreachable {seconds:g} s",
        f"{statuses.count(200)}/{len(statuses)} user requests answered; validator alive, {skipped} rounds skipped; weights set {recovered:.1f} s after it returned",
    )
    assert statuses.count(200) == len(statuses) > 0  # the gateway routed on the last metagraph it read
    assert skipped >= 1 and code == 0  # the validator noticed, skipped rounds, and stopped cleanly when asked
    assert "metagraph sync failed, keeping the last one" in gateway.log_tail(200_000)


def test_the_chain_unreachable_for_15_s_stops_no_answer_and_weights_follow_its_return(subnet, figure):
    _chain_outage(subnet, 15, figure)


@pytest.mark.soak
def test_the_chain_unreachable_for_60_s_stops_no_answer_and_weights_follow_its_return(subnet, figure):
    _chain_outage(subnet, 60, figure)


def _mount(folder, *options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)], check=True, capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small or read-only filesystem for the state folder needs root")
def test_a_full_or_read_only_state_folder_gets_a_clear_error_and_never_a_corrupt_database(subnet, figure):
    """The state folder on a real filesystem of its own (tmpfs): read-only from the start, then
    full in the middle of a run, then given space again."""
    tmp = subnet["tmp"]
    read_only, small = tmp / "read-only", tmp / "small"
    _mount(read_only, "ro", "size=1m")
    _mount(small, "size=16m")
    try:
        args = _args(subnet, "read-only/state", rounds=1)
        done = subprocess.run([sys.executable, "-m", "neurons.cli", "validator", *args], capture_output=True, text=True, timeout=300, env=engine_env(tmp))
        assert done.returncode != 0 and "cannot be written" in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]

        log_path = tmp / "validator-full.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "neurons.cli", "validator", *_args(subnet, "small/state", rounds=10**6)],
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
            env=engine_env(tmp),
        )
        store = small / "state" / "validator.sqlite"
        rounds = lambda: [r for (r,) in sqlite3.connect(store).execute("SELECT round FROM rounds ORDER BY round")] if store.exists() else []  # noqa: E731

        def wait_for(condition, what: str, timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert process.poll() is None and time.monotonic() < deadline, f"{what}:\n{log_path.read_text()[-3000:]}"
                time.sleep(0.5)

        try:
            wait_for(lambda: len(rounds()) >= 1, "no first round")
            # Every free byte taken; unbuffered, so the write that meets the full disk raises here and closing has
            # nothing left to flush (buffered, the close raised ENOSPC whenever the last write left bytes behind).
            with (small / "filler").open("wb", buffering=0) as filler:
                try:
                    while True:
                        filler.write(b"\0" * (1 << 16))
                except OSError:
                    pass
            wait_for(lambda: "round not stored: the state folder" in log_path.read_text(), "no clear error when full")
            stored_while_full = rounds()
            (small / "filler").unlink()
            wait_for(lambda: len(rounds()) > len(stored_while_full) + 1, "no round stored once space was back")
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=120)
        db = sqlite3.connect(store)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = rounds()
        assert stored == list(range(len(stored))) and code == 0  # nothing half-written, no gap, a clean stop
        journal = [json.loads(line)["round"] for line in (small / "state" / "rounds.jsonl").read_text().splitlines()]
        assert journal == stored  # what the full disk kept out of the journal was appended when it could be
        figure("state folder read-only at start", "exit 1, one line: 'the state folder … cannot be written'")
        figure("state folder full mid-run, then freed", f"validator alive; {len(stored)} rounds, no gap; PRAGMA integrity_check ok; journal caught up")
    finally:
        for folder in (read_only, small):
            subprocess.run(["umount", "--lazy", str(folder)], capture_output=True)  # detached even while a child still holds a file there


@pytest.mark.soak
def test_the_reference_engine_killed_mid_verification_costs_no_miner_anything(subnet, figure):
    """The validator starts and supervises its own reference engine (--serve-reference); it is
    SIGKILLed at a random moment of a later round. Answers it could not check are 'unverified'
    (neither for nor against a miner), the supervisor starts the engine again, and the rounds
    after it verify as before: no honest miner is failed, banned or reset."""
    import psutil

    tmp = subnet["tmp"]
    args = _args(subnet, "validator-reference", rounds=10**6)
    at = args.index("--reference")
    args[at : at + 2] = ["--serve-reference", MODEL]
    log_path = tmp / "validator-reference.log"
    validator = subprocess.Popen(
        [sys.executable, "-m", "neurons.cli", "validator", *args], stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=engine_env(tmp)
    )
    store = tmp / "validator-reference" / "validator.sqlite"
    rounds = lambda: sqlite3.connect(store).execute("SELECT COUNT(*) FROM rounds").fetchone()[0] if store.exists() else 0  # noqa: E731
    try:
        deadline = time.monotonic() + 600
        while rounds() < 2:
            assert validator.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        engines = [p for p in psutil.Process(validator.pid).children(recursive=True) if "vllm.entrypoints" in " ".join(p.cmdline())]
        time.sleep(random.Random().uniform(0.0, 3.0))  # somewhere in a round: queries, then verification
        killed_at, before = time.monotonic(), rounds()
        for engine in engines:
            engine.kill()
        while rounds() < before + 3:  # rounds during the outage, and verified ones after it
            assert validator.poll() is None and time.monotonic() - killed_at < 900, log_path.read_text()[-3000:]
            time.sleep(1)
        back = time.monotonic() - killed_at
    finally:
        validator.send_signal(signal.SIGTERM)
        validator.wait(timeout=180)
    db = sqlite3.connect(store)
    outcomes = dict(db.execute("SELECT outcome, COUNT(*) FROM results GROUP BY outcome").fetchall())
    assert db.execute("SELECT COUNT(*) FROM results WHERE passed = 0").fetchone() == (0,)  # nobody failed for our engine's death
    last = json.loads(db.execute("SELECT summary FROM rounds ORDER BY round DESC LIMIT 1").fetchone()[0])
    assert not last["fidelity_failed"] and not last["flagged"] and all(v > 0 for v in last["effective"].values())
    assert db.execute("SELECT COUNT(*) FROM results WHERE round = ? AND passed = 1", (last["round"],)).fetchone()[0] > 0  # verifying again
    figure("reference engine SIGKILLed mid-round", f"outcomes {outcomes}; 0 answers failed; verifying again, 3 rounds on, {back:.0f} s after the kill")

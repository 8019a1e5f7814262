"""Several processes share one localnet folder, and the CLI drives it."""

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
from pathlib import Path

import bittensor as bt

import chain

WRITER = r"""
import asyncio, sys
import bittensor as bt
import chain
from chain.localnet import admin

directory, wallets, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def main():
    async with chain.connect("localnet:" + directory) as c:
        for i in range(count):
            w = bt.wallets.create(f"{prefix}{i}", "default", path=wallets, use_password=False, on_mnemonic=lambda *_: None)
            admin.fund(directory, w.coldkeypub.ss58_address, 10)
            (await c.register(w, 1)).raise_for_failure()
            (await c.commit(w, 1, f"{prefix}-{i}")).raise_for_failure()

asyncio.run(main())
"""


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def test_two_processes_writing_at_once_lose_nothing(localnet, tmp_path):
    count = 12
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(localnet.dir), str(tmp_path / "w"), prefix, str(count)], env=_env(tmp_path))
        for prefix in ("a", "b")
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]

    async def read():
        async with chain.connect(localnet.network) as c:
            return await c.metagraph(localnet.netuid)

    graph = asyncio.run(read())
    assert len(graph.neurons) == 2 * count
    assert sorted(n.uid for n in graph.neurons) == list(range(2 * count))
    assert sorted(n.commitment for n in graph.neurons) == sorted(f"{p}-{i}" for p in "ab" for i in range(count))


def slmnet(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neurons.cli", *args], env=_env(tmp_path), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def test_cli_creates_funds_stakes_and_reports(tmp_path):
    directory = str(tmp_path / "net")
    created = slmnet(tmp_path, "localnet", "init", "--dir", directory, "--tempo", "5", "--block-time", "0.1", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["netuid"] == 1
    again = slmnet(tmp_path, "localnet", "init", "--dir", directory)
    assert again.returncode == 1 and "already exists" in again.stderr

    made = slmnet(tmp_path, "wallet", "create", "--path", str(tmp_path / "w"), "--name", "val", "--hotkey", "hk", "--json")
    wallet = json.loads(made.stdout)
    assert slmnet(tmp_path, "localnet", "fund", "--dir", directory, "--coldkey", wallet["coldkey_ss58"], "--tao", "50").returncode == 0

    flags = [
        "--network",
        f"localnet:{directory}",
        "--netuid",
        "1",
        "--wallet-path",
        str(tmp_path / "w"),
        "--wallet-name",
        "val",
        "--wallet-hotkey",
        "hk",
        "--json",
    ]
    unconfirmed = slmnet(tmp_path, "register", *flags)  # no terminal to ask on, no --yes: nothing burned
    assert unconfirmed.returncode == 1 and "burns 1 TAO from coldkey val (it holds 50 TAO); pass --yes" in unconfirmed.stderr, unconfirmed.stderr
    registered = slmnet(tmp_path, "register", *flags, "--yes")
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout) == {"netuid": 1, "uid": 0, "hotkey": wallet["hotkey_ss58"]}
    assert json.loads(slmnet(tmp_path, "register", *flags).stdout)["uid"] == 0  # already registered: nothing paid twice
    broke = slmnet(tmp_path, "wallet", "create", "--path", str(tmp_path / "w"), "--name", "broke", "--hotkey", "hk", "--json")
    assert broke.returncode == 0
    unpaid = slmnet(tmp_path, "register", *flags[:6], "--wallet-name", "broke", "--wallet-hotkey", "hk", "--yes")
    assert unpaid.returncode == 1 and "Registration costs 1.0 TAO; the coldkey has 0.0 TAO" in unpaid.stderr
    staked = slmnet(
        tmp_path, "localnet", "stake", "--dir", directory, "--coldkey", wallet["coldkey_ss58"], "--hotkey", wallet["hotkey_ss58"], "--tao", "20", "--json"
    )
    assert staked.returncode == 0, staked.stderr
    assert json.loads(staked.stdout)["stake_tao"] == 20

    status = json.loads(slmnet(tmp_path, "localnet", "status", "--dir", directory, "--json").stdout)
    (neuron,) = status["neurons"]
    assert neuron["hotkey"] == wallet["hotkey_ss58"] and neuron["coldkey"] == wallet["coldkey_ss58"]
    assert neuron["stake"] == 20 and neuron["validator_permit"] is True
    assert {"uid", "ip", "port", "model", "incentive"} <= set(neuron)
    table = slmnet(tmp_path, "localnet", "status", "--dir", directory)
    assert table.returncode == 0 and wallet["hotkey_ss58"][:10] in table.stdout

    overdrawn = slmnet(
        tmp_path, "localnet", "stake", "--dir", directory, "--coldkey", wallet["coldkey_ss58"], "--hotkey", wallet["hotkey_ss58"], "--tao", "1000"
    )
    assert overdrawn.returncode == 1 and "TAO free" in overdrawn.stderr
    missing = slmnet(tmp_path, "localnet", "status", "--dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no localnet" in missing.stderr


def test_a_writer_killed_mid_write_leaves_the_chain_consistent_and_its_nonces_usable(localnet, tmp_path, figure):
    """Two writers register and commit; one is SIGKILLed at a random moment. The chain's file
    is intact, every account's nonce is the number of its extrinsics on chain, the other writer
    lost nothing, and the killed writer's last account can write again with its next nonce."""
    count = 30  # two writers: 60 of the subnet's 64 uids
    env = _env(tmp_path)
    procs = {prefix: subprocess.Popen([sys.executable, "-c", WRITER, str(localnet.dir), str(tmp_path / "w"), prefix, str(count)], env=env) for prefix in "ab"}
    # Killed once a random number of the 120 extrinsics (a register and a commit per account) are on chain: mid-write by construction.
    after = random.Random().randrange(10, 80)
    db = sqlite3.connect(localnet.dir / "chain.sqlite", timeout=30)
    deadline = time.monotonic() + 120
    while db.execute("SELECT COUNT(*) FROM extrinsics").fetchone()[0] < after and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(procs["a"].pid, signal.SIGKILL)
    assert procs["a"].wait(timeout=60) == -signal.SIGKILL and procs["b"].wait(timeout=300) == 0

    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    sent = dict(db.execute("SELECT signer, COUNT(*) FROM extrinsics GROUP BY signer").fetchall())
    nonces = dict(db.execute("SELECT address, nonce FROM accounts WHERE nonce > 0").fetchall())
    assert nonces == sent  # each extrinsic on chain consumed exactly one nonce, none lost, none twice

    async def read():
        async with chain.connect(localnet.network) as c:
            return await c.metagraph(localnet.netuid)

    graph = asyncio.run(read())
    commitments = sorted(n.commitment for n in graph.neurons if n.commitment)
    assert sorted(n.uid for n in graph.neurons) == list(range(len(graph.neurons)))
    assert [c for c in commitments if c.startswith("b-")] == sorted(f"b-{i}" for i in range(count))
    done_a = [c for c in commitments if c.startswith("a-")]
    assert done_a == sorted(f"a-{i}" for i in range(len(done_a)))  # a's writes landed in order, up to the kill
    # The killed writer's last registered account writes again from a new process, with the nonce the chain holds.
    on_chain = {n.hotkey for n in graph.neurons}
    made = [i for i in range(count) if (tmp_path / "w" / f"a{i}" / "hotkeys" / "default").exists()]
    last = max((i for i in made if bt.Wallet(f"a{i}", "default", path=str(tmp_path / "w")).hotkey.ss58_address in on_chain), default=None)
    if last is not None:  # (b may have sent the first extrinsics all alone)
        again = RESUME.format(directory=localnet.dir, wallets=tmp_path / "w", name=f"a{last}")
        assert subprocess.run([sys.executable, "-c", again], env=env, timeout=120).returncode == 0
    figure(
        f"localnet writer SIGKILLed after {after} extrinsics",
        f"integrity ok; nonces = extrinsics for {len(nonces)} accounts; {len(done_a)} of a's commits, all of b's; a's next write accepted",
    )


RESUME = r"""
import asyncio
import bittensor as bt
import chain

async def main():
    w = bt.Wallet("{name}", "default", path="{wallets}")
    async with chain.connect("localnet:{directory}") as c:
        (await c.commit(w, 1, "again")).raise_for_failure()

asyncio.run(main())
"""

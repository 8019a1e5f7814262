"""Several processes share one localnet folder, and the CLI drives it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

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

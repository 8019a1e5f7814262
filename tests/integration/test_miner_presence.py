"""The miner's on-chain presence through the real SDK on the localnet: written once, re-written only when it changes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

import chain
from chain import announce
from protocol.commitment import GatewayDeclaration, ModelDeclaration

DECLARED = ModelDeclaration(model="slmnet/tiny-qwen2-s0", weights_sha256="ab" * 32, max_context=1024, capacity=8)


async def test_presence_is_published_once_and_republished_when_anything_changes(localnet):
    miner = localnet.wallet("miner")
    async with chain.connect(localnet.network) as c:
        (await c.register(miner, 1)).raise_for_failure()
        hotkey = miner.hotkey.ss58_address

        assert await announce(c, miner, await c.metagraph(1), "127.0.0.1", 8091, DECLARED.to_commitment()) == ["serve", "commit"]
        assert await announce(c, miner, await c.metagraph(1), "127.0.0.1", 8091, DECLARED.to_commitment()) == []
        bigger = DECLARED.model_copy(update={"capacity": 16})
        assert await announce(c, miner, await c.metagraph(1), "127.0.0.1", 8091, bigger.to_commitment()) == ["commit"]
        assert await announce(c, miner, await c.metagraph(1), "127.0.0.1", 9000, bigger.to_commitment()) == ["serve"]

        neuron = (await c.metagraph(1)).by_hotkey(hotkey)
    assert neuron.endpoint == "http://127.0.0.1:9000"
    assert neuron.model == bigger and not neuron.gateway


async def test_a_gateway_announces_its_endpoint_and_role_and_reads_back_as_one(localnet):
    gateway = localnet.wallet("gateway")
    async with chain.connect(localnet.network) as c:
        (await c.register(gateway, 1)).raise_for_failure()
        assert await announce(c, gateway, await c.metagraph(1), "127.0.0.1", 8000, GatewayDeclaration().to_commitment()) == ["serve", "commit"]
        neuron = (await c.metagraph(1)).by_hotkey(gateway.hotkey.ss58_address)
    assert neuron.gateway and neuron.model is None and neuron.endpoint == "http://127.0.0.1:8000"


async def test_an_unregistered_hotkey_has_no_presence_to_publish(localnet):
    stranger = localnet.wallet("stranger")
    async with chain.connect(localnet.network) as c:
        with pytest.raises(chain.NotRegistered, match="not registered on subnet 1"):
            await announce(c, stranger, await c.metagraph(1), "127.0.0.1", 8091, DECLARED.to_commitment())


def test_models_list_tells_a_miner_who_serves_each_model_of_the_list(localnet):
    """`slmnet models list`: two miners declaring the tiny model (4 and 8 streams), none the others; before any epoch
    has paid anyone, every share is 0 and nothing is paid per stream."""
    wallets, _ = localnet.register(("m1", "m2"))

    async def declare() -> None:
        async with chain.connect(localnet.network) as c:
            for port, (wallet, capacity) in enumerate(((wallets["m1"], 4), (wallets["m2"], 8)), start=8091):
                tiny = DECLARED.model_copy(update={"capacity": capacity, "weights_sha256": None})
                await announce(c, wallet, await c.metagraph(1), "127.0.0.1", port, tiny.to_commitment())

    asyncio.run(declare())
    done = subprocess.run(
        [sys.executable, "-m", "neurons.cli", "models", "list", "--network", localnet.network, "--netuid", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = {r["model"]: r for r in json.loads(done.stdout)["models"]}
    assert (rows["slmnet/tiny-qwen2-s0"]["miners"], rows["slmnet/tiny-qwen2-s0"]["streams_declared"]) == (2, 12)
    assert all(r["miners"] == 0 for model, r in rows.items() if model != "slmnet/tiny-qwen2-s0") and len(rows) == 3
    assert all(r["incentive_share"] == 0 for r in rows.values())

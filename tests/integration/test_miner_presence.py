"""The miner's on-chain presence through the real SDK on the localnet: written once, re-written only when it changes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

import chain
from chain import announce
from protocol.commitment import ModelDeclaration, NodeCommitment

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
        assert await announce(c, gateway, await c.metagraph(1), "127.0.0.1", 8000, NodeCommitment(role="gateway").to_commitment()) == ["serve", "commit"]
        neuron = (await c.metagraph(1)).by_hotkey(gateway.hotkey.ss58_address)
    assert neuron.gateway and neuron.model is None and neuron.endpoint == "http://127.0.0.1:8000"


async def test_a_validator_commits_each_tempos_seed_secret_before_using_it_and_reveals_it_after(localnet):
    """Round seeds no miner can compute and anyone can check afterwards: the validator commits the hash of a
    tempo's secret, and the next tempo reveals it; the seed of a round of the earlier tempo is then recomputed
    from public values. The gateway sharing the validator's hotkey keeps its role through it, and the seeds
    survive the gateway's announcing; a hotkey that commits the owner's model list keeps it."""
    import hashlib

    from validator.challenges import round_seed, tempo_secret
    from validator.service import commit_seeds

    node, owner = localnet.wallet("node"), localnet.wallet("owner-like")
    master = b"m" * 32
    async with chain.connect(localnet.network) as c:
        for wallet in (node, owner):
            (await c.register(wallet, 1)).raise_for_failure()
        hotkey = node.hotkey.ss58_address
        await announce(c, node, await c.metagraph(1), "127.0.0.1", 8000, NodeCommitment(role="gateway").to_commitment())
        assert await commit_seeds(c, node, await c.metagraph(1), master, 40) == "committed"
        assert await commit_seeds(c, node, await c.metagraph(1), master, 40) is None  # on chain already: no write
        first = NodeCommitment.of((await c.metagraph(1)).by_hotkey(hotkey).commitment)
        assert first.role == "gateway" and first.seeds.tempo == 40 and first.seeds.revealed is None
        block_hash = await c.block_hash(await c.block())
        seed = round_seed(block_hash, hotkey, 3, tempo_secret(master, 40))  # what a round of tempo 40 used

        assert await commit_seeds(c, node, await c.metagraph(1), master, 41) == "committed"
        graph = await c.metagraph(1)
        second = NodeCommitment.of(graph.by_hotkey(hotkey).commitment)
        assert second.seeds.tempo == 41 and second.seeds.revealed_tempo == 40
        revealed = bytes.fromhex(second.seeds.revealed)
        assert hashlib.sha256(revealed).hexdigest() == first.seeds.next  # the secret committed before the tempo
        assert round_seed(block_hash, hotkey, 3, revealed) == seed  # anyone recomputes the round's seed
        assert second.seeds.next != first.seeds.next  # tempo 41's secret stays hidden

        # the gateway on the same hotkey: its role is already there, nothing to write, the seeds stay
        assert await announce(c, node, graph, "127.0.0.1", 8000, NodeCommitment.with_part(graph.by_hotkey(hotkey).commitment, role="gateway")) == []
        assert NodeCommitment.of((await c.metagraph(1)).by_hotkey(hotkey).commitment) == second

        listed = "slmnet-models:1:" + "f" * 64
        (await c.commit(owner, 1, listed)).raise_for_failure()
        assert await commit_seeds(c, owner, await c.metagraph(1), master, 41) == "kept"
        assert (await c.metagraph(1)).by_hotkey(owner.hotkey.ss58_address).commitment == listed


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

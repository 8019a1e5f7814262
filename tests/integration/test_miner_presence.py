"""The miner's on-chain presence through the real SDK on the localnet: written once, re-written only when it changes."""

from __future__ import annotations

import pytest

import chain
from miner.presence import reconcile
from protocol.commitment import ModelDeclaration

DECLARED = ModelDeclaration(model="slmnet/tiny-qwen2-s0", weights_sha256="ab" * 32, max_context=1024, capacity=8)


async def test_presence_is_published_once_and_republished_when_anything_changes(localnet):
    miner = localnet.wallet("miner")
    async with chain.connect(localnet.network) as c:
        (await c.register(miner, 1)).raise_for_failure()
        hotkey = miner.hotkey.ss58_address

        assert await reconcile(c, miner, await c.metagraph(1), "127.0.0.1", 8091, DECLARED) == ["serve", "commit"]
        assert await reconcile(c, miner, await c.metagraph(1), "127.0.0.1", 8091, DECLARED) == []
        bigger = DECLARED.model_copy(update={"capacity": 16})
        assert await reconcile(c, miner, await c.metagraph(1), "127.0.0.1", 8091, bigger) == ["commit"]
        assert await reconcile(c, miner, await c.metagraph(1), "127.0.0.1", 9000, bigger) == ["serve"]

        neuron = (await c.metagraph(1)).by_hotkey(hotkey)
    assert neuron.endpoint == "http://127.0.0.1:9000"
    assert neuron.model == bigger


async def test_an_unregistered_hotkey_has_no_presence_to_publish(localnet):
    stranger = localnet.wallet("stranger")
    async with chain.connect(localnet.network) as c:
        with pytest.raises(chain.NotRegistered, match="not registered on subnet 1"):
            await reconcile(c, stranger, await c.metagraph(1), "127.0.0.1", 8091, DECLARED)

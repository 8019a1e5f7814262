"""The localnet through the real SDK and the chain layer: a small subnet's life."""

from __future__ import annotations

import asyncio

import bittensor as bt
import pytest

import chain
from chain.localnet import admin
from protocol.commitment import ModelDeclaration

DECLARATION = ModelDeclaration(model="slmnet/tiny-qwen2", revision="r1", max_context=2048, capacity=4)


async def wait_for_epochs(c: chain.Chain, netuid: int, count: int = 1) -> None:
    for _ in range(count):
        await asyncio.wait_for(c.client.wait_for_epoch(netuid), timeout=30)


async def snapshot(c: chain.Chain, netuid: int):
    """What a user can read back: neurons, weights, commitments and balances."""
    graph = await c.metagraph(netuid)
    weights = await c.client.query_map(("SubtensorModule", "Weights"), [netuid])
    return [(n.uid, n.hotkey, n.ip, n.port, n.commitment, n.last_update, n.validator_permit) for n in graph.neurons], weights


@pytest.fixture
async def subnet(localnet):
    """Two validators (stake 900 and 100) and four miners, registered, served and committed."""
    validators = [localnet.wallet(f"validator{i}") for i in range(2)]
    miners = [localnet.wallet(f"miner{i}") for i in range(4)]
    async with chain.connect(localnet.network) as c:
        for w in validators + miners:
            (await c.register(w, localnet.netuid)).raise_for_failure()
        for i, w in enumerate(miners):
            (await c.serve(w, localnet.netuid, "127.0.0.1", 9100 + i)).raise_for_failure()
            (await c.commit(w, localnet.netuid, DECLARATION.to_commitment())).raise_for_failure()
        localnet.stake(validators[0], 900)
        localnet.stake(validators[1], 100)
        yield c, validators, miners


async def test_endpoints_and_models_read_back(localnet, subnet):
    c, validators, miners = subnet
    graph = await c.metagraph(localnet.netuid)
    assert [n.hotkey for n in graph.neurons] == [w.hotkey.ss58_address for w in validators + miners]
    for i, w in enumerate(miners):
        neuron = graph.by_hotkey(w.hotkey.ss58_address)
        assert neuron.endpoint == f"http://127.0.0.1:{9100 + i}"
        assert neuron.model == DECLARATION
        assert neuron.coldkey == w.coldkeypub.ss58_address
    assert [n.validator_permit for n in graph.neurons] == [True, True, False, False, False, False]
    assert graph.uid(0).stake == pytest.approx(900)
    assert graph.neurons[0].endpoint is None and graph.neurons[0].model is None
    # the SDK's neuron listing (NeuronInfoRuntimeApi) agrees with the metagraph
    listed = await c.client.neurons.all(localnet.netuid)
    assert [(n.uid, n.hotkey, n.validator_permit) for n in listed] == [(n.uid, n.hotkey, n.validator_permit) for n in graph.neurons]
    assert listed[0].total_stake.rao == 900 * 10**9


async def test_incentive_follows_the_stake_majority_and_clips_the_outlier(localnet, subnet):
    c, validators, miners = subnet
    # uids: validators 0, 1; miners 2..5. The majority pays miners 2-4; the minority
    # validator puts everything on miner 5, which the majority gives nothing.
    (await c.set_weights(validators[0], localnet.netuid, {2: 1.0, 3: 1.0, 4: 0.5})).raise_for_failure()
    (await c.set_weights(validators[1], localnet.netuid, {5: 1.0})).raise_for_failure()
    await wait_for_epochs(c, localnet.netuid, 2)
    graph = await c.metagraph(localnet.netuid)
    incentive = {n.uid: n.incentive for n in graph.neurons}
    assert incentive[5] == 0.0
    assert incentive[2] == pytest.approx(0.4, abs=1e-3) and incentive[3] == pytest.approx(0.4, abs=1e-3)
    assert incentive[4] == pytest.approx(0.2, abs=1e-3)
    assert graph.uid(5).consensus == 0.0
    assert graph.uid(0).dividends > 0.99  # only the majority validator holds bonds
    assert graph.uid(2).emission > 0 and graph.uid(5).emission == 0
    # incentive responds when the weights change: the majority now pays miner 5 too
    await asyncio.sleep(0.6)  # past the weights rate limit (5 blocks of 0.1 s)
    (await c.set_weights(validators[0], localnet.netuid, {2: 1.0, 5: 1.0})).raise_for_failure()
    await wait_for_epochs(c, localnet.netuid, 2)
    graph = await c.metagraph(localnet.netuid)
    assert graph.uid(5).incentive > 0.3 and graph.uid(3).incentive == 0.0


async def test_double_registration_fails_and_changes_nothing(localnet, subnet):
    c, validators, _ = subnet
    before = await c.client.balances.get(validators[0].coldkeypub.ss58_address)
    graph_before = await c.metagraph(localnet.netuid)
    result = await c.register(validators[0], localnet.netuid)
    assert not result.success and result.error_name == "HotKeyAlreadyRegisteredInSubNet"
    with pytest.raises(chain.WriteFailed, match="already registered"):
        result.raise_for_failure()
    assert await c.client.balances.get(validators[0].coldkeypub.ss58_address) == before
    assert len((await c.metagraph(localnet.netuid)).neurons) == len(graph_before.neurons)


async def test_weights_for_unknown_uids_fail_with_a_clear_message(localnet, subnet):
    c, validators, _ = subnet
    result = await c.set_weights(validators[0], localnet.netuid, {2: 1.0, 42: 1.0})
    assert not result.success and result.error_name == "UidVecContainInvalidOne"
    assert "42" in result.message
    with pytest.raises(chain.InvalidWeights):
        result.raise_for_failure()
    graph = await c.metagraph(localnet.netuid)
    assert graph.uid(0).last_update == 0  # nothing was recorded


async def test_weights_too_soon_are_refused_and_the_first_ones_stand(localnet, subnet):
    c, validators, _ = subnet
    (await c.set_weights(validators[0], localnet.netuid, {2: 1.0})).raise_for_failure()
    first = (await c.metagraph(localnet.netuid)).uid(0).last_update
    result = await c.set_weights(validators[0], localnet.netuid, {3: 1.0})
    assert not result.success and "rate limit" in result.message
    with pytest.raises(chain.RateLimited):
        result.raise_for_failure()
    weights = dict(await c.client.query_map(("SubtensorModule", "Weights"), [localnet.netuid]))
    assert weights[0] == [(2, 65535)]
    assert (await c.metagraph(localnet.netuid)).uid(0).last_update == first


async def test_miner_without_permit_cannot_set_weights(localnet, subnet):
    c, _, miners = subnet
    result = await c.set_weights(miners[0], localnet.netuid, {3: 1.0})
    assert not result.success and result.error_name == "NeuronNoValidatorPermit"


async def test_bad_signature_is_rejected_and_leaves_state_intact(localnet, subnet):
    c, validators, miners = subnet
    victim = miners[0]
    call = bt.calls.SubtensorModule.serve_axon(
        netuid=localnet.netuid, version=1, ip=0x7F000001, port=9999, ip_type=4, protocol=4, placeholder1=0, placeholder2=0
    )
    unsigned = await c.client.prepare_call(call, address=victim.hotkey.ss58_address)
    forged = validators[0].hotkey.sign(unsigned.payload)  # signed by someone else
    before = await snapshot(c, localnet.netuid)
    result = await c.client.submit_signature(unsigned, forged)
    assert not result.success and "bad signature" in result.message
    assert await snapshot(c, localnet.netuid) == before
    # the genuine signature over the same payload goes through
    genuine = await c.client.submit_signature(unsigned, victim.hotkey.sign(unsigned.payload))
    assert genuine.success
    assert (await c.metagraph(localnet.netuid)).by_hotkey(victim.hotkey.ss58_address).port == 9999
    # and replaying it is refused by its nonce
    replay = await c.client.submit_signature(unsigned, victim.hotkey.sign(unsigned.payload))
    assert not replay.success and "outdated" in replay.message


async def test_unregistered_hotkey_cannot_serve_or_commit(localnet):
    stranger = localnet.wallet("stranger")
    async with chain.connect(localnet.network) as c:
        served = await c.serve(stranger, localnet.netuid, "127.0.0.1", 9000)
        committed = await c.commit(stranger, localnet.netuid, DECLARATION.to_commitment())
        assert not served.success and served.error_name == "HotKeyNotRegisteredInSubNet"
        assert not committed.success and committed.error_name == "AccountNotAllowedCommit"
        with pytest.raises(chain.NotRegistered):
            await c.uid_of(localnet.netuid, stranger.hotkey.ss58_address)


async def test_registration_needs_the_burn(localnet):
    poor = localnet.wallet("poor", fund_tao=0.5)
    async with chain.connect(localnet.network) as c:
        result = await c.register(poor, localnet.netuid)
    assert not result.success and result.error_name == "NotEnoughBalanceToStake"


async def test_registrations_beyond_a_blocks_limit_land_in_the_next_blocks(localnet):
    admin.set_hyperparameter(localnet.dir, localnet.netuid, "max_registrations_per_block", 1)
    wallets = [localnet.wallet(f"crowd{i}") for i in range(4)]
    async with chain.connect(localnet.network) as c:
        results = await asyncio.gather(*(c.register(w, localnet.netuid) for w in wallets))
        assert [r.success for r in results] == [True] * 4, [r.message for r in results]
        uids = [await c.uid_of(localnet.netuid, w.hotkey.ss58_address) for w in wallets]
    assert sorted(uids) == [0, 1, 2, 3]
    assert len({r.block_hash for r in results}) == 4  # one a block, as the subnet allows


async def test_commit_reveal_subnet_records_timelocked_commits(localnet, subnet):
    c, validators, _ = subnet
    admin.set_hyperparameter(localnet.dir, localnet.netuid, "commit_reveal_weights_enabled", True)
    result = await c.set_weights(validators[0], localnet.netuid, {2: 1.0})
    assert result.success
    commits = await c.client.query_map(("SubtensorModule", "TimelockedWeightCommits"), [localnet.netuid])
    assert [entry[1][0] for entry in commits] == [validators[0].hotkey.ss58_address]
    await wait_for_epochs(c, localnet.netuid, 2)
    weights = dict(await c.client.query_map(("SubtensorModule", "Weights"), [localnet.netuid]))
    assert 0 not in weights  # sealed until the drand round, which never comes offline
    # plain weights are refused while commit-reveal is on
    direct = await c.client.submit_call(
        bt.calls.SubtensorModule.set_mechanism_weights(netuid=localnet.netuid, mecid=0, dests=[2], weights=[65535], version_key=0),
        validators[1],
        signer="hotkey",
    )
    assert not direct.success and direct.error.name == "CommitRevealEnabled"


async def test_salted_commit_is_revealed_after_the_reveal_period(localnet, subnet):
    from bittensor.sp_core import ss58_decode

    from chain.localnet.weights import legacy_commit_hash

    c, validators, _ = subnet
    admin.set_hyperparameter(localnet.dir, localnet.netuid, "commit_reveal_weights_enabled", True)
    hotkey = validators[0].hotkey.ss58_address
    uids, values, salt = [2, 3], [65535, 32768], [7, 8, 9]
    digest = legacy_commit_hash(bytes(ss58_decode(hotkey)), localnet.netuid, uids, values, salt, 0)
    commit = bt.calls.SubtensorModule.commit_mechanism_weights(netuid=localnet.netuid, mecid=0, commit_hash="0x" + digest.hex())
    assert (await c.client.submit_call(commit, validators[0], signer="hotkey")).success
    reveal = bt.RevealWeights(netuid=localnet.netuid, uids=uids, weights=[1.0, 32768 / 65535], salt=salt)
    early = await c.client.execute(reveal, validators[0])
    assert not early.success and early.error.name == "RevealTooEarly"
    await wait_for_epochs(c, localnet.netuid, 1)
    wrong = await c.client.execute(bt.RevealWeights(netuid=localnet.netuid, uids=uids, weights=[1.0, 1.0], salt=salt), validators[0])
    assert not wrong.success and wrong.error.name == "InvalidRevealCommitHashNotMatch"
    assert (await c.client.execute(reveal, validators[0])).success
    weights = dict(await c.client.query_map(("SubtensorModule", "Weights"), [localnet.netuid]))
    assert weights[0] == [(2, 65535), (3, 32768)]


async def test_block_hashes_are_stable_per_block_and_change_with_the_block(localnet):
    async with chain.connect(localnet.network) as c:
        first = await c.block()
        assert await c.block_hash(first) == await c.block_hash(first)
        await asyncio.sleep(0.3)  # three blocks at 0.1 s
        assert await c.block_hash() != await c.block_hash(first)
        with pytest.raises(chain.NetworkError, match="unknown"):
            await c.block_hash(first + 10_000)

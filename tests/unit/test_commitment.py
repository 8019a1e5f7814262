"""On-chain commitments: a miner's model declaration, a gateway's role, and the address a neuron may announce."""

from __future__ import annotations

import pytest

from chain import ChainConfig
from chain.writes import commitment_info
from miner.config import MinerConfig
from protocol.commitment import CommitmentDecodeError, ModelDeclaration, NodeCommitment, SeedCommitment


def test_declaration_round_trips_through_commitment_text():
    declared = ModelDeclaration(model="HuggingFaceTB/SmolLM2-135M-Instruct", revision="a" * 40, weights_sha256="0" * 64, max_context=8192, capacity=16)
    assert ModelDeclaration.from_commitment(declared.to_commitment()) == declared


def test_declaration_fits_the_chain_in_raw_fields():
    text = ModelDeclaration(model="m" * 96, revision="r" * 64, weights_sha256="f" * 64, max_context=1, capacity=1).to_commitment()
    fields = commitment_info(text)["fields"]
    assert 1 <= len(fields) <= 3
    assert b"".join(bytes.fromhex(v[2:]) for f in fields for v in f.values()).decode() == text


@pytest.mark.parametrize("text", ["", "not json", '{"model": "x"}', '{"model":"x","max_context":1,"capacity":1,"v":9}'])
def test_anything_else_is_not_a_declaration(text):
    with pytest.raises(CommitmentDecodeError):
        ModelDeclaration.from_commitment(text)


def test_oversize_commitment_is_refused_before_submission():
    with pytest.raises(ValueError, match="at most 384"):
        commitment_info("x" * 400)


def test_a_gateway_declares_its_role_and_a_model_declaration_is_no_gateway():
    assert NodeCommitment.declares_gateway(NodeCommitment(role="gateway").to_commitment())
    model = ModelDeclaration(model="m", max_context=2048, capacity=4).to_commitment()
    assert not any(NodeCommitment.declares_gateway(text) for text in (model, None, "", "{}", '{"role":"miner","v":1}', '{"role":"gateway","v":9}', "[1"))


def test_a_validator_and_a_gateway_on_one_hotkey_each_write_their_part_and_keep_the_others_and_never_the_owners_list():
    seeds = SeedCommitment(tempo=7, next="a" * 64, revealed_tempo=6, revealed="b" * 64)
    gateway = NodeCommitment.with_part(None, role="gateway")
    both = NodeCommitment.with_part(gateway, seeds=seeds)
    assert both is not None and NodeCommitment.declares_gateway(both) and NodeCommitment.of(both).seeds == seeds
    assert NodeCommitment.with_part(both, role="gateway") == both  # nothing to write: the chain already says it
    assert len(commitment_info(both)["fields"]) <= 3
    # the owner's model list, a miner's declaration, another version: not a node's to write over
    for other in ("slmnet-models:3:" + "f" * 64, ModelDeclaration(model="m", max_context=2048, capacity=4).to_commitment(), '{"role":"gateway","v":9}'):
        assert NodeCommitment.with_part(other, seeds=seeds) is None and NodeCommitment.with_part(other, role="gateway") is None


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.7", "169.254.1.1", "::1", "not-an-ip"])
def test_an_address_nothing_can_reach_is_refused_on_a_public_network_and_allowed_on_a_local_one(ip):
    with pytest.raises(ValueError, match="external-ip"):
        MinerConfig(chain=ChainConfig("finney", 1, "/w", "m"), port=8091, external_ip=ip, engine_url="http://e", model_id="m")
    if ip != "not-an-ip":  # a localnet or a node of one's own: loopback is what it is for
        MinerConfig(chain=ChainConfig("localnet:/tmp/x", 1, "/w", "m"), port=8091, external_ip=ip, engine_url="http://e", model_id="m")
    MinerConfig(chain=ChainConfig("test", 1, "/w", "m"), port=8091, external_ip="1.2.3.4", engine_url="http://e", model_id="m")

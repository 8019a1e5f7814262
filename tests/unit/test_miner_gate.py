"""The miner's admission limits and sender checks, without a server around them."""

from __future__ import annotations

import pytest
from bittensor.wallets import Keypair

from chain import MetagraphView, NeuronView
from miner.admission import Admission
from miner.auth import Gatekeeper
from miner.errors import Forbidden, Overloaded, Unauthorized
from signed.client import signed_headers

MINER, VALIDATOR, WHALE, MINNOW = (Keypair.create_from_uri(f"//{name}") for name in ("Miner", "Validator", "Whale", "Minnow"))


def _neuron(uid: int, keypair: Keypair, stake: float, permit: bool) -> NeuronView:
    return NeuronView(uid, keypair.ss58_address, keypair.ss58_address, stake, permit, None, None, None, None, 0.0, 0.0, 0.0, 0.0, 0.0, 0)


def _gate(min_stake: float = 100.0) -> Gatekeeper:
    gate = Gatekeeper(MINER.ss58_address, min_stake=min_stake)
    neurons = (_neuron(0, MINER, 0, False), _neuron(1, VALIDATOR, 5, True), _neuron(2, WHALE, 500, False), _neuron(3, MINNOW, 50, False))
    gate.update(MetagraphView(netuid=1, block=10, tempo=20, blocks_since_epoch=3, neurons=neurons))
    return gate


def _check(gate: Gatekeeper, signer: Keypair):
    return gate.check(signed_headers(signer, MINER.ss58_address, "POST", "/v1/completions", b"{}"), b"{}", "POST", "/v1/completions")


def test_a_permit_or_the_stake_floor_lets_a_sender_in():
    gate = _gate(min_stake=100)
    assert _check(gate, VALIDATOR).uid == 1  # 5 TAO, but a validator permit
    assert _check(gate, WHALE).stake == 500  # no permit, above the floor
    with pytest.raises(Forbidden, match="50 TAO of stake and no validator permit"):
        _check(gate, MINNOW)
    assert _check(_gate(min_stake=10), MINNOW).uid == 3  # the floor is the operator's


def test_a_request_signed_for_a_path_is_refused_on_another():
    gate = _gate()
    headers = signed_headers(VALIDATOR, MINER.ss58_address, "POST", "/v1/completions", b"{}")
    with pytest.raises(Unauthorized) as refused:
        gate.check(headers, b"{}", "POST", "/v1/chat/completions")
    assert refused.value.code == "auth_bad_signature" and refused.value.status == 401


def test_in_flight_limits_hold_per_caller_and_overall_and_free_on_error():
    admission = Admission(global_limit=3, per_caller_limit=2)
    with admission.admit("a"), admission.admit("a"):
        with pytest.raises(Overloaded) as busy:
            with admission.admit("a"):
                pass
        assert busy.value.code == "caller_busy" and busy.value.headers == {"Retry-After": "1"}
        with admission.admit("b"):
            with pytest.raises(Overloaded, match="limit of 3"):
                with admission.admit("c"):
                    pass
    with pytest.raises(RuntimeError):
        with admission.admit("a"):
            raise RuntimeError("the engine failed")
    assert admission.in_flight == 0
    with admission.admit("a"), admission.admit("a"), admission.admit("b"):
        assert admission.in_flight == 3

"""Typed, read-only views of a subnet as slmnet uses it.

Built from the SDK's ``Metagraph``; stakes and emission are in TAO (floats), scores
in [0, 1]. ``model`` is the miner's declaration parsed from its commitment, or None
when it published none or something that is not a declaration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import bittensor as bt

from protocol.commitment import CommitmentDecodeError, ModelDeclaration, NodeCommitment

log = logging.getLogger(__name__)
RAO_PER_TAO = 1_000_000_000


@dataclass(frozen=True)
class NeuronView:
    uid: int
    hotkey: str
    coldkey: str
    stake: float  # TAO-equivalent total stake
    validator_permit: bool
    ip: Optional[str]  # served endpoint, None when nothing is served
    port: Optional[int]
    model: Optional[ModelDeclaration]
    commitment: Optional[str]  # raw commitment text, whatever it holds
    incentive: float
    consensus: float
    trust: float
    dividends: float
    emission: float  # TAO-equivalent emitted to this uid in the last epoch
    last_update: int  # block of its last weights
    gateway: bool = False  # its commitment declares a gateway (at its endpoint), not a model

    @property
    def trusted_gateway(self) -> bool:
        """A declared gateway with an endpoint whose hotkey holds a validator permit: what validators read."""
        return self.gateway and self.validator_permit and self.endpoint is not None

    @property
    def endpoint(self) -> Optional[str]:
        """``http://ip:port`` of the served endpoint, or None."""
        if self.ip is None or self.port is None:
            return None
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class MetagraphView:
    netuid: int
    block: int
    tempo: int
    blocks_since_epoch: int
    neurons: tuple[NeuronView, ...]
    owner_hotkey: Optional[str] = None  # the subnet owner's hotkey: its commitment names the model list

    def by_hotkey(self, hotkey: str) -> Optional[NeuronView]:
        return next((n for n in self.neurons if n.hotkey == hotkey), None)

    @property
    def owner_commitment(self) -> Optional[str]:
        """What the owner's hotkey committed (None when it is not registered or committed nothing)."""
        owner = self.by_hotkey(self.owner_hotkey) if self.owner_hotkey else None
        return owner.commitment if owner else None

    def uid(self, uid: int) -> NeuronView:
        if not 0 <= uid < len(self.neurons):
            raise KeyError(f"no uid {uid} on subnet {self.netuid}")
        return self.neurons[uid]


def _split_endpoint(axon: Optional[str]) -> tuple[Optional[str], Optional[int]]:
    if not axon:
        return None, None
    host, _, port = axon.rpartition(":")
    return host.strip("[]"), int(port)


def _declaration(hotkey: str, text: Optional[str]) -> Optional[ModelDeclaration]:
    if not text:
        return None
    try:
        return ModelDeclaration.from_commitment(text)
    except CommitmentDecodeError as exc:
        log.debug("hotkey %s commitment is not a model declaration: %s", hotkey, exc)
        return None


def from_sdk(graph: bt.Metagraph) -> MetagraphView:
    neurons = []
    for n in graph.neurons:
        ip, port = _split_endpoint(n.axon)
        text = n.commitment.value if n.commitment is not None else None
        neurons.append(
            NeuronView(
                uid=n.uid,
                hotkey=n.hotkey,
                coldkey=n.coldkey,
                stake=n.total_stake.rao / RAO_PER_TAO,
                validator_permit=n.validator_permit,
                ip=ip,
                port=port,
                model=_declaration(n.hotkey, text),
                commitment=text,
                incentive=n.incentive,
                consensus=n.consensus,
                trust=n.trust,
                dividends=n.dividends,
                emission=n.emission.rao / RAO_PER_TAO,
                last_update=n.last_update,
                gateway=NodeCommitment.declares_gateway(text),
            )
        )
    return MetagraphView(
        netuid=graph.netuid,
        block=graph.block,
        tempo=graph.tempo,
        blocks_since_epoch=graph.blocks_since_last_step,
        neurons=tuple(neurons),
        owner_hotkey=graph.owner_hotkey or None,
    )

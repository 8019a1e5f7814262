"""Who may call this miner: btauth/1 signatures checked against the subnet's metagraph.

A request must be signed (``bittensor.http_auth``) by a hotkey registered on the subnet,
addressed to this miner's hotkey, fresh and never seen before (401 otherwise), and the
sender must hold a validator permit or at least ``min_stake`` TAO (403 otherwise). On a
small subnet miners that earn emission gain stake and even permits, so the stake floor
is the gate operators tune; the permit alone lets real validators through at any stake.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Optional

from chain import MetagraphView
from miner.errors import Forbidden
from signed.server import SignatureCheck

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sender:
    """An authenticated, permitted caller."""

    hotkey: str
    uid: int
    stake: float
    validator_permit: bool


class Gatekeeper:
    """Checks signatures and the sender's standing; ``update`` swaps in a fresh metagraph."""

    def __init__(self, self_hotkey: str, min_stake: float):
        self.self_hotkey = self_hotkey
        self.min_stake = min_stake
        self.signatures = SignatureCheck(self_hotkey)
        self._senders: dict[str, Sender] = {}
        self.netuid: Optional[int] = None
        self.block: Optional[int] = None

    def update(self, graph: MetagraphView) -> None:
        self._senders = {n.hotkey: Sender(n.hotkey, n.uid, n.stake, n.validator_permit) for n in graph.neurons}
        self.netuid, self.block = graph.netuid, graph.block

    def check(self, headers: Mapping[str, str], body: bytes, method: str, path: str) -> Sender:
        """The sender of a request; Unauthorized (401) or Forbidden (403) with the reason."""
        hotkey = self.signatures.sender(headers, body, method, path)
        sender = self._senders.get(hotkey)
        if sender is None:
            raise Forbidden(f"hotkey {hotkey} is not registered on subnet {self.netuid}", code="sender_not_registered")
        if not sender.validator_permit and sender.stake < self.min_stake:
            raise Forbidden(
                f"hotkey {hotkey} (uid {sender.uid}) has {sender.stake:g} TAO of stake and no validator permit; "
                f"this miner requires a permit or {self.min_stake:g} TAO",
                code="sender_not_staked",
            )
        return sender

"""A hotkey's on-chain presence: its served endpoint and its commitment.

``announce`` compares what the chain shows for a hotkey with what its process serves and
writes only what differs, so a restart with the same flags costs no transaction, and a
changed port or commitment (a miner's model declaration, a gateway's role) is re-published.
"""

from __future__ import annotations

import logging
from typing import Any

from chain.client import Chain
from chain.errors import NotRegistered
from chain.views import MetagraphView

log = logging.getLogger(__name__)


async def announce(chain: Chain, wallet: Any, graph: MetagraphView, ip: str, port: int, commitment: str) -> list[str]:
    """Bring the chain in line; returns the writes made (``serve``, ``commit``).

    NotRegistered when the hotkey has no uid on the subnet; WriteFailed when a write is refused.
    """
    hotkey = wallet.hotkey.ss58_address
    neuron = graph.by_hotkey(hotkey)
    if neuron is None:
        raise NotRegistered(f"hotkey {hotkey} is not registered on subnet {graph.netuid} of {chain.network}")
    writes = []
    if (neuron.ip, neuron.port) != (ip, port):
        (await chain.serve(wallet, graph.netuid, ip, port)).raise_for_failure()
        log.info("served endpoint %s:%s for uid %s", ip, port, neuron.uid)
        writes.append("serve")
    if neuron.commitment != commitment:
        (await chain.commit(wallet, graph.netuid, commitment)).raise_for_failure()
        log.info("committed %s for uid %s", commitment, neuron.uid)
        writes.append("commit")
    return writes

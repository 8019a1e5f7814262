"""The miner's on-chain presence: its served endpoint and its model declaration.

``reconcile`` compares what the chain shows for this hotkey with what the miner serves
and writes only what differs, so a restart with the same flags costs no transaction,
and a changed port, model, revision, weights, context or capacity is re-published.
"""

from __future__ import annotations

import logging
from typing import Any

from chain import Chain, MetagraphView, NotRegistered
from protocol.commitment import ModelDeclaration

log = logging.getLogger(__name__)


async def reconcile(chain: Chain, wallet: Any, graph: MetagraphView, ip: str, port: int, declaration: ModelDeclaration) -> list[str]:
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
    if neuron.model != declaration:
        (await chain.commit(wallet, graph.netuid, declaration.to_commitment())).raise_for_failure()
        log.info("committed model declaration %s for uid %s", declaration.to_commitment(), neuron.uid)
        writes.append("commit")
    return writes

"""``connect(network)``: one chain connection for a process, whatever the network.

Networks: ``finney``, ``test``, ``local`` (a node on ws://127.0.0.1:9944),
``ws://host:port`` / ``wss://host:port``, and ``localnet:DIR`` (the embedded
localnet in folder DIR). Everything above this module uses :class:`Chain`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import bittensor as bt
from bittensor.result import ChainError
from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt

from . import views, writes
from .errors import NetworkError, NotRegistered
from .localnet import LocalnetSubstrate

log = logging.getLogger(__name__)

LOCALNET_PREFIX = "localnet:"
NAMED_NETWORKS = ("finney", "test", "local")
FULL_BLOCK = "TooManyRegistrationsThisBlock"
REGISTRATION_BLOCKS = 5  # blocks a registration is tried in while each is full of others'


def parse_network(network: str) -> tuple[str, Optional[Path]]:
    """(SDK network label, localnet folder or None); NetworkError when unknown."""
    if network.startswith(LOCALNET_PREFIX):
        folder = network[len(LOCALNET_PREFIX) :]
        if not folder:
            raise NetworkError("localnet needs a folder: localnet:DIR")
        return "local", Path(folder).expanduser()
    if network in NAMED_NETWORKS or network.startswith(("ws://", "wss://")):
        return network, None
    raise NetworkError(f"unknown network {network!r}: use finney, test, local, ws://host:port, wss://host:port or localnet:DIR")


class Chain:
    """An open connection. Use as ``async with connect(network) as chain``."""

    def __init__(self, network: str):
        label, folder = parse_network(network)
        self.network = network
        self.localnet_dir = folder
        substrate = LocalnetSubstrate(folder) if folder is not None else None
        # Pin the client to the one endpoint asked for: no public fallback pools. (The SDK's protocol types block_hash
        # as always a hash; a node answers null for a block it does not have, and so does the localnet.)
        if substrate is not None:
            self.client = bt.Client(label, substrate=substrate)  # type: ignore[arg-type]
        else:
            self.client = bt.Client(label, fallback_endpoints=[], archive_endpoints=[])

    async def __aenter__(self) -> "Chain":
        try:
            await self.client.connect()
        except (ChainError, bt.RpcConnectionError, OSError) as exc:
            raise NetworkError(f"cannot connect to {self.network}: {exc}") from exc
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.client.close()

    # Reads ---------------------------------------------------------------------------

    async def block(self) -> int:
        return await self._reading(self.client.block())

    async def block_hash(self, block: Optional[int] = None) -> str:
        """The hash of ``block`` (default: the head), hex with 0x."""
        info = await self._reading(self.client.block_info(block))
        if info is None or not info.hash:
            raise NetworkError(f"block {block if block is not None else 'head'} is unknown to {self.network}")
        return info.hash

    async def metagraph(self, netuid: int) -> views.MetagraphView:
        """The subnet as slmnet sees it; NetworkError when the subnet does not exist."""
        graph = await self._reading(self.client.subnets.metagraph(netuid))
        if graph is None:
            raise NetworkError(f"subnet {netuid} does not exist on {self.network}")
        return views.from_sdk(graph)

    async def uid_of(self, netuid: int, hotkey: str) -> int:
        """The hotkey's uid; NotRegistered when it has none."""
        uid = await self._reading(self.client.query(("SubtensorModule", "Uids"), [netuid, hotkey]))
        if uid is None:
            raise NotRegistered(f"hotkey {hotkey} is not registered on subnet {netuid} of {self.network}")
        return int(uid)

    async def weights_version(self, netuid: int) -> int:
        """The subnet's ``WeightsVersionKey``: weights with an older version key are refused."""
        value = await self._reading(self.client.query(("SubtensorModule", "WeightsVersionKey"), [netuid]))
        return int(value or 0)

    async def registration_cost(self, netuid: int) -> float:
        """TAO a burned registration on ``netuid`` costs now (it moves with demand)."""
        rao = await self._reading(self.client.query(("SubtensorModule", "Burn"), [netuid]))
        return int(rao or 0) / views.RAO_PER_TAO

    async def free_balance(self, coldkey: str) -> float:
        """A coldkey's free TAO."""
        balance = await self._reading(self.client.balances.balance(coldkey))
        return balance.rao / views.RAO_PER_TAO

    async def _reading(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (ChainError, bt.RpcConnectionError) as exc:
            raise NetworkError(f"reading {self.network} failed: {exc}") from exc

    # Writes --------------------------------------------------------------------------

    async def register(self, wallet: Any, netuid: int) -> writes.WriteResult:
        """Burned registration. A block already holding the subnet's most registrations
        (``TooManyRegistrationsThisBlock``: others registered first) says nothing about this
        wallet, so the same registration is sent again in each of the next blocks, up to
        REGISTRATION_BLOCKS in all; any other outcome is returned at once."""
        retrying = AsyncRetrying(
            retry=retry_if_result(lambda result: result.error_name == FULL_BLOCK),
            stop=stop_after_attempt(REGISTRATION_BLOCKS),
            sleep=lambda _seconds: self._reading(self.client.wait_for_block()),  # the next block, not a fixed time
            retry_error_callback=lambda state: state.outcome.result() if state.outcome is not None else None,
        )
        return await retrying(writes.register, self.client, wallet, netuid)

    async def serve(self, wallet: Any, netuid: int, ip: str, port: int) -> writes.WriteResult:
        return await writes.serve(self.client, wallet, netuid, ip, port)

    async def commit(self, wallet: Any, netuid: int, text: str) -> writes.WriteResult:
        return await writes.commit(self.client, wallet, netuid, text)

    async def set_weights(self, wallet: Any, netuid: int, weights: Mapping[int, float], version_key: int = 0) -> writes.WriteResult:
        return await writes.set_weights(self.client, wallet, netuid, weights, version_key)


def connect(network: str) -> Chain:
    """A :class:`Chain` for ``network``, to be entered with ``async with``."""
    return Chain(network)

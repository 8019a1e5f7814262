"""``LocalnetSubstrate``: the SDK's ``Substrate`` protocol over a localnet folder.

``bittensor.Client(substrate=LocalnetSubstrate(DIR))`` gives the real SDK (reads,
intents, ``execute``, ``submit_call``) a one-machine chain. Like a node, it checks
every extrinsic's sr25519 signature and nonce before dispatch, rejects bad ones as
pool errors that change nothing, and runs failed dispatches as failed results that
consume the nonce and change nothing else. MEV-shielded submissions are decrypted
with the block author's real ML-KEM-768 key and the inner extrinsic is applied in
the same block, as the chain does.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, TypeVar

from bittensor.balance import Balance
from bittensor.result import ChainError, ExtrinsicResult, RpcConnectionError
from bittensor.sp_core import ss58_decode
from cryptography.hazmat.primitives.asymmetric import mlkem

from . import codec, epoch, pool, reads, runtime, store

log = logging.getLogger(__name__)
T = TypeVar("T")
_SPEC_NAME = "slmnet-localnet"
# While a file of this name is in the folder, every call fails as a node that cannot be reached
# would (RpcConnectionError): an outage switch (`touch DIR/OFFLINE`, `rm DIR/OFFLINE`) for fault tests.
OFFLINE = "OFFLINE"


class LocalnetSubstrate:
    """A localnet in ``directory`` (created by ``slmnet localnet init``), as a Substrate."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.token_symbols: dict[int, str] = {}
        self._conn: Optional[sqlite3.Connection] = None
        self._genesis: Optional[store.Genesis] = None
        self._lock = threading.Lock()
        self._mev_key: Optional[mlkem.MLKEM768PrivateKey] = None

    # Lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        if (self.directory / OFFLINE).exists():
            raise RpcConnectionError(f"localnet {self.directory} is offline (its {OFFLINE} file)")
        if self._conn is not None:
            return
        try:
            conn = await asyncio.to_thread(store.connect, self.directory)
        except store.LocalnetMissing as exc:
            raise ChainError(str(exc)) from exc
        self._genesis = store.read_genesis(conn)
        self._mev_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(self._genesis.mev_private_key)
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def balance(self, rao: int, netuid: int = 0) -> Balance:
        return Balance(int(rao), netuid, self.token_symbols.get(netuid) if netuid else None)

    # Plumbing --------------------------------------------------------------------

    def _require(self) -> tuple[sqlite3.Connection, store.Genesis]:
        if (self.directory / OFFLINE).exists():
            raise RpcConnectionError(f"localnet {self.directory} is offline (its {OFFLINE} file): as a node that does not answer")
        if self._conn is None or self._genesis is None:
            raise ChainError("Localnet connection is not open: use `async with Client(...)` or connect() first.")
        return self._conn, self._genesis

    async def _run(self, fn: Callable[[sqlite3.Connection, int], T]) -> T:
        """Run ``fn(conn, head)`` off the event loop, after any epochs that are due."""
        conn, genesis = self._require()

        def work() -> T:
            with self._lock:
                head = store.current_block(genesis)
                if epoch.pending_epochs(conn, head):
                    with store.write(conn):
                        epoch.catch_up(conn, head)
                with store.snapshot(conn):
                    return fn(conn, head)

        return await asyncio.to_thread(work)

    async def _read(self, fn: Callable[[sqlite3.Connection, int], T]) -> T:
        try:
            return await self._run(fn)
        except reads.UnknownRead as exc:
            raise ChainError(str(exc)) from exc

    # Reads -----------------------------------------------------------------------

    async def block_number(self) -> int:
        return store.current_block(self._require()[1])

    async def finalized_block_number(self) -> int:
        return await self.block_number()  # instant finality

    async def block_hash(self, block: Optional[int] = None) -> Optional[str]:
        genesis = self._require()[1]
        head = store.current_block(genesis)
        number = head if block is None else int(block)
        if number > head or number < 0:
            return None
        return pool.hash_of_block(genesis, number)

    async def block_time(self) -> float:
        return self._require()[1].block_time

    async def spec_version(self) -> int:
        return codec.SPEC_VERSION

    async def get_block(self, block_number: Optional[int] = None, block_hash: Optional[str] = None) -> Optional[dict]:
        number = self._number_of(block_hash) if block_hash else block_number
        genesis = self._require()[1]
        number = store.current_block(genesis) if number is None else number

        def read(conn: sqlite3.Connection, head: int) -> Optional[dict]:
            if number > head:
                return None
            rows = conn.execute("SELECT * FROM extrinsics WHERE block = ? ORDER BY idx", (number,)).fetchall()
            return {
                "header": {
                    "number": number,
                    "hash": pool.hash_of_block(genesis, number),
                    "parentHash": pool.hash_of_block(genesis, number - 1) if number else None,
                },
                "extrinsics": [
                    {"extrinsic_hash": r["hash"], "address": r["signer"], "call": {"call_module": r["module"], "call_function": r["function"]}} for r in rows
                ],
            }

        return await self._read(read)

    def _number_of(self, block_hash: str) -> Optional[int]:
        """The block number a hash names, or None when this chain made no such hash."""
        genesis = self._require()[1]
        try:
            number = int(block_hash.removeprefix("0x")[:16], 16)
        except ValueError:
            return None
        return number if pool.hash_of_block(genesis, number) == block_hash else None

    async def query(self, module: str, storage_function: str, params: Optional[list] = None, block_hash: Optional[str] = None) -> Any:
        if (module, storage_function) == ("MevShield", "NextKey"):
            return await self.mev_next_key()
        return await self._read(lambda conn, head: reads.query(conn, head, module, storage_function, params or []))

    async def map_has_entries(self, module: str, storage_function: str, params: list, block_hash: Optional[str] = None) -> bool:
        return bool(await self.query_map(module, storage_function, params, block_hash))

    async def query_map(self, module: str, storage_function: str, params: Optional[list] = None, block_hash: Optional[str] = None) -> list[tuple[Any, Any]]:
        return await self._read(lambda conn, head: reads.query_map(conn, head, module, storage_function, params or []))

    async def query_batch(self, module: str, storage_function: str, param_sets: list[list], block_hash: Optional[str] = None) -> list[Any]:
        return await self._read(lambda conn, head: [reads.query(conn, head, module, storage_function, p) for p in param_sets])

    async def runtime_call(self, api: str, method: str, params: list, block_hash: Optional[str] = None) -> Any:
        return await self._read(lambda conn, head: reads.runtime_call(conn, head, api, method, params))

    async def constant(self, module: str, name: str) -> Any:
        genesis = self._require()[1]
        constants = {
            ("Aura", "SlotDuration"): int(genesis.block_time * 1000),
            ("Timestamp", "MinimumPeriod"): int(genesis.block_time * 500),
            ("SubtensorModule", "InitialStartCallDelay"): 0,
            ("Balances", "ExistentialDeposit"): 500,
        }
        if (module, name) not in constants:
            raise ChainError(f"the localnet does not model constant {module}.{name}")
        return constants[(module, name)]

    async def decode_scale(self, type_string: str, data: Any) -> Any:
        raise ChainError("the localnet encodes calls as JSON, not SCALE; decode_scale is not available")

    async def blocks(self, *, finalized: bool = False) -> AsyncIterator[dict]:
        genesis = self._require()[1]
        last = store.current_block(genesis)
        while True:
            head = store.current_block(genesis)
            for number in range(last + 1, head + 1):
                yield {"header": {"number": number, "hash": pool.hash_of_block(genesis, number)}}
            last = head
            await asyncio.sleep(genesis.block_time / 2)

    async def events(self, block_hash: Optional[str] = None) -> list[dict]:
        number = self._number_of(block_hash) if block_hash else store.current_block(self._require()[1])

        def read(conn: sqlite3.Connection, head: int) -> list[dict]:
            out: list[dict] = []
            for row in conn.execute("SELECT idx, events FROM extrinsics WHERE block = ? ORDER BY idx", (number,)):
                out.extend({"extrinsic_idx": row["idx"], "event": e} for e in codec.from_json(row["events"]))
            return out

        return await self._read(read)

    # Calls and fees --------------------------------------------------------------

    async def compose(self, call) -> codec.CallBytes:
        module, function, params = call
        return codec.encode_call(module, function, dict(params))

    async def estimate_fee(self, call, keypair) -> Balance:
        return Balance.from_rao(0)  # the localnet charges no transaction fees

    async def estimate_weight(self, call, keypair) -> dict:
        return {"ref_time": 0, "proof_size": 0}

    async def account_next_index(self, address: str) -> int:
        return await self._read(lambda conn, head: runtime.account(conn, address)[1])

    # Writes ----------------------------------------------------------------------

    async def mev_next_key(self) -> Optional[bytes]:
        self._require()
        assert self._mev_key is not None
        return self._mev_key.public_key().public_bytes_raw()

    def _signed(self, call: codec.CallBytes, keypair, nonce: int, period: int) -> codec.Extrinsic:
        genesis = self._require()[1]
        payload = codec.signing_payload(call.data, signer=keypair.ss58_address, nonce=nonce, era=period, genesis_hash=genesis.genesis_hash)
        signature = keypair.sign(payload)
        return codec.Extrinsic(call.data, keypair.ss58_address, nonce, period, bytes(signature))

    async def sign_extrinsic(self, call, keypair, *, nonce: int, period: int) -> tuple[bytes, str]:
        extrinsic = self._signed(call, keypair, nonce, period)
        return extrinsic.encode(), extrinsic.hash

    async def submit(
        self, call, keypair, *, nonce: Optional[int] = None, period: Optional[int] = 64, wait_for_inclusion: bool = True, wait_for_finalization: bool = True
    ) -> ExtrinsicResult:
        if nonce is None:
            nonce = await self.account_next_index(keypair.ss58_address)
        return await self._submit_extrinsic(self._signed(call, keypair, nonce, period or 0))

    async def submit_signed(self, extrinsic, keypair, *, wait_for_inclusion: bool = True, wait_for_finalization: bool = True) -> ExtrinsicResult:
        try:
            parsed = codec.Extrinsic.decode(extrinsic.data)
        except ValueError as exc:
            return pool.rejection(f"Invalid Transaction: {exc}")
        return await self._submit_extrinsic(parsed)

    async def prepare(
        self,
        call,
        *,
        address: str,
        crypto_type: int = 1,
        nonce: Optional[int] = None,
        period: Optional[int] = 64,
        tip: int = 0,
        metadata_hash: Optional[bytes] = None,
    ) -> codec.UnsignedExtrinsic:
        genesis = self._require()[1]
        if nonce is None:
            nonce = await self.account_next_index(address)
        era = int(period or 0)
        payload = codec.signing_payload(call.data, signer=address, nonce=nonce, era=era, genesis_hash=genesis.genesis_hash)
        return codec.UnsignedExtrinsic(
            call_data=call.data,
            address=address,
            public_key=bytes(ss58_decode(address)),
            crypto_type=crypto_type,
            era={"period": era, "current": store.current_block(genesis)},
            nonce=nonce,
            tip=tip,
            tip_asset_id=None,
            genesis_hash=genesis.genesis_hash,
            era_block_hash=genesis.genesis_hash,
            spec_version=codec.SPEC_VERSION,
            transaction_version=codec.EXTRINSIC_VERSION,
            metadata_hash=metadata_hash,
            payload=payload,
            payload_json={"specName": _SPEC_NAME, "address": address, "nonce": nonce, "method": "0x" + call.data.hex()},
            included_in_extrinsic=b"",
            included_in_signed_data=b"",
        )

    async def submit_signature(
        self, unsigned: codec.UnsignedExtrinsic, signature: bytes | str, *, wait_for_inclusion: bool = True, wait_for_finalization: bool = True
    ) -> ExtrinsicResult:
        raw = bytes.fromhex(signature.removeprefix("0x")) if isinstance(signature, str) else bytes(signature)
        era = unsigned.era["period"] if isinstance(unsigned.era, dict) else 0
        return await self._submit_extrinsic(codec.Extrinsic(unsigned.call_data, unsigned.address, unsigned.nonce, int(era), raw))

    async def find_extrinsic(self, extrinsic_hash: str, block_hash: str) -> Optional[ExtrinsicResult]:
        number = self._number_of(block_hash)

        def read(conn: sqlite3.Connection, head: int) -> Optional[ExtrinsicResult]:
            row = conn.execute("SELECT * FROM extrinsics WHERE hash = ? AND block = ?", (extrinsic_hash, number)).fetchone()
            return None if row is None else pool.result_of(row, self._require()[1])

        return await self._read(read)

    def multisig_account(self, signatories: list[str], threshold: int):
        raise ChainError("the localnet does not implement multisig accounts")

    async def submit_multisig(self, call, keypair, multisig_account, *, wait_for_inclusion: bool = True, wait_for_finalization: bool = True) -> ExtrinsicResult:
        raise ChainError("the localnet does not implement multisig accounts")

    # The node ----------------------------------------------------------------------

    async def _submit_extrinsic(self, extrinsic: codec.Extrinsic) -> ExtrinsicResult:
        conn, genesis = self._require()
        if (rejected := pool.admit(extrinsic, genesis)) is not None:
            return pool.rejection(rejected)

        mev_key = self._mev_key
        assert mev_key is not None  # made with the genesis, before any extrinsic is admitted

        def work() -> ExtrinsicResult | str:
            with self._lock, store.write(conn):
                block = store.current_block(genesis)
                epoch.catch_up(conn, block)
                outcome = pool.apply(conn, genesis, mev_key, block, extrinsic)
                if isinstance(outcome, str):
                    return outcome
                row = conn.execute("SELECT * FROM extrinsics WHERE hash = ?", (extrinsic.hash,)).fetchone()
                return pool.result_of(row, genesis)

        outcome = await asyncio.to_thread(work)
        if isinstance(outcome, str):
            log.warning("rejected extrinsic from %s: %s", extrinsic.signer, outcome)
            return pool.rejection(outcome)
        return outcome

"""Localnet administration: create a chain, fund accounts, seed stake.

These are the genesis and sudo powers of a development chain; they write state
directly instead of going through signed extrinsics. Used by `slmnet localnet ...`
and by test fixtures.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import bittensor as bt

from . import codec, epoch, runtime, store
from .store import RAO_PER_TAO

OWNER_WALLET = "owner"


def init(directory: Path, *, netuid: int = 1, tempo: int = 20, block_time: float = 0.25, **hyperparameters) -> dict:
    """Create a localnet with one subnet owned by a fresh ``owner`` wallet in ``DIR/wallets``.

    Returns a summary (genesis hash, netuid, owner addresses).
    """
    if block_time <= 0:
        raise ValueError("block time must be positive")
    if tempo < 1:
        raise ValueError("tempo must be at least 1 block")
    directory = Path(directory)
    if (directory / store.DB_NAME).exists():
        raise FileExistsError(f"a localnet already exists at {directory}")
    owner = bt.wallets.create(OWNER_WALLET, "default", path=str(directory / "wallets"), use_password=False, overwrite=True, on_mnemonic=lambda *_: None)
    genesis = store.Genesis(
        genesis_hash=codec.hex_hash(secrets.token_bytes(32)),
        genesis_time=time.time(),
        block_time=float(block_time),
        mev_private_key=os.urandom(64),
    )
    conn = store.create(directory, genesis)
    try:
        with store.write(conn):
            runtime.create_subnet(conn, netuid, 0, owner.coldkeypub.ss58_address, owner.hotkey.ss58_address, tempo=tempo, **hyperparameters)
    finally:
        conn.close()
    return {
        "dir": str(directory),
        "genesis_hash": genesis.genesis_hash,
        "netuid": netuid,
        "tempo": tempo,
        "block_time": block_time,
        "owner_coldkey": owner.coldkeypub.ss58_address,
        "owner_hotkey": owner.hotkey.ss58_address,
    }


def _tao_to_rao(tao: float) -> int:
    if tao <= 0:
        raise ValueError("the amount must be positive")
    return int(round(tao * RAO_PER_TAO))


def fund(directory: Path, coldkey: str, tao: float) -> int:
    """Credit ``tao`` to an account; returns its new free balance in rao."""
    _check_address(coldkey)
    conn = store.connect(directory)
    try:
        with store.write(conn):
            free, nonce = runtime.account(conn, coldkey)
            runtime.set_account(conn, coldkey, free + _tao_to_rao(tao), nonce)
            return free + _tao_to_rao(tao)
    finally:
        conn.close()


def stake(directory: Path, coldkey: str, hotkey: str, tao: float, netuid: int | None = None) -> int:
    """Stake ``tao`` from a coldkey's free balance to a hotkey it owns, on one subnet: ``netuid``,
    or the first where the hotkey is registered. Validator permits are refreshed at once on
    every subnet the hotkey is on, as a genesis configuration would set them. Returns the
    hotkey's new stake on that subnet, in rao."""
    _check_address(coldkey)
    _check_address(hotkey)
    rao = _tao_to_rao(tao)
    conn = store.connect(directory)
    try:
        with store.write(conn):
            owner = conn.execute("SELECT coldkey FROM owners WHERE hotkey = ?", (hotkey,)).fetchone()
            if owner is None:
                raise ValueError(f"hotkey {hotkey} is not registered on this localnet")
            if owner["coldkey"] != coldkey:
                raise ValueError(f"hotkey {hotkey} belongs to coldkey {owner['coldkey']}, not {coldkey}")
            free, nonce = runtime.account(conn, coldkey)
            if free < rao:
                raise ValueError(f"coldkey {coldkey} has {free / RAO_PER_TAO} TAO free, less than {tao}")
            subnets = [int(r["netuid"]) for r in conn.execute("SELECT netuid FROM neurons WHERE hotkey = ?", (hotkey,))]
            subnets = [s for s in subnets if netuid is None or s == netuid]
            if not subnets:
                raise ValueError(f"hotkey {hotkey} is not registered on subnet {netuid}")
            runtime.set_account(conn, coldkey, free - rao, nonce)
            runtime.add_stake(conn, hotkey, coldkey, subnets[0], rao)
            for s in subnets:
                epoch.refresh_validator_permits(conn, s)
            return runtime.hotkey_stake(conn, subnets[0])[hotkey]
    finally:
        conn.close()


def set_hyperparameter(directory: Path, netuid: int, name: str, value) -> None:
    """Change one subnet hyperparameter (the subnet owner's / sudo's power)."""
    conn = store.connect(directory)
    try:
        with store.write(conn):
            hp, state = runtime.subnet(conn, netuid)
            if name not in hp:
                raise ValueError(f"unknown hyperparameter {name!r}; known: {sorted(hp)}")
            hp[name] = type(hp[name])(value)
            runtime.save_subnet(conn, netuid, hp, state)
    finally:
        conn.close()


def _check_address(address: str) -> None:
    try:
        bt.sp_core.ss58_decode(address)
    except Exception as exc:
        raise ValueError(f"{address!r} is not an SS58 address") from exc

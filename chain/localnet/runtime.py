"""The localnet's state: subnet and account storage, and what every pallet's extrinsics share (``chain.localnet.dispatch`` routes them).

Each function here runs inside one ``store.write`` transaction. A dispatch that fails
raises :class:`DispatchError` with the chain's own error name, and the caller rolls
the transaction back, so a failed extrinsic changes nothing (the nonce included,
unlike a real chain which keeps the fee; the localnet charges no fees).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from . import codec
from .store import RAO_PER_TAO, U16_MAX

# Hyperparameters of a new localnet subnet. Values chosen for a fast development
# chain; `slmnet localnet init` overrides tempo, and the admin can set any of them.
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "tempo": 20,
    "max_uids": 256,
    "max_allowed_validators": 64,
    "weights_rate_limit": 5,
    "min_allowed_weights": 1,
    "max_weight_limit": U16_MAX,
    "weights_version": 0,
    "commit_reveal_weights_enabled": False,
    "reveal_period_epochs": 1,
    "burn": RAO_PER_TAO,
    "registration_allowed": True,
    "max_registrations_per_block": 16,
    "immunity_period": 100,
    "activity_cutoff": 5000,
    "kappa": 32767,  # u16 fraction: 0.5
    "bonds_moving_avg": 900_000,  # per million: EMA keeps 90% of the old bonds
    "serving_rate_limit": 0,
    "emission_per_block": RAO_PER_TAO,  # alpha rao emitted per block
    "collateral_lock_share": 0,
    "min_stake_to_set_weights": 0,
}
MAX_COMMITMENT_FIELDS = 3
MAX_UNREVEALED_COMMITS = 10


class DispatchError(Exception):
    """An extrinsic failed on chain; ``name`` is subtensor's error name."""

    def __init__(self, name: str, docs: str):
        super().__init__(f"{name}: {docs}")
        self.name = name
        self.docs = docs


@dataclass
class Context:
    """What one dispatch sees: the open transaction and the block it lands in."""

    conn: sqlite3.Connection
    block: int
    events: list[dict]

    def emit(self, module: str, event: str, **attributes: Any) -> None:
        self.events.append({"module_id": module, "event_id": event, "attributes": attributes})


# --- Subnets and accounts ----------------------------------------------------------


def subnet(conn: sqlite3.Connection, netuid: int) -> tuple[dict, dict]:
    """(hyperparameters, state) of a subnet; DispatchError when it does not exist."""
    row = conn.execute("SELECT hp, state FROM subnets WHERE netuid = ?", (netuid,)).fetchone()
    if row is None:
        raise DispatchError("SubnetNotExists", f"The subnet {netuid} does not exist.")
    return codec.from_json(row["hp"]), codec.from_json(row["state"])


def save_subnet(conn: sqlite3.Connection, netuid: int, hp: dict, state: dict) -> None:
    conn.execute(
        "INSERT INTO subnets VALUES (?, ?, ?) ON CONFLICT (netuid) DO UPDATE SET hp = excluded.hp, state = excluded.state",
        (netuid, codec.to_json(hp), codec.to_json(state)),
    )


def create_subnet(conn: sqlite3.Connection, netuid: int, block: int, owner_coldkey: str, owner_hotkey: str, **overrides: Any) -> None:
    unknown = set(overrides) - set(DEFAULT_HYPERPARAMETERS)
    if unknown:
        raise ValueError(f"unknown hyperparameters: {sorted(unknown)}")
    if conn.execute("SELECT 1 FROM subnets WHERE netuid = ?", (netuid,)).fetchone():
        raise ValueError(f"subnet {netuid} already exists")
    hp = {**DEFAULT_HYPERPARAMETERS, **overrides}
    state = {
        "registered_at": block,
        "last_epoch_block": block,
        "epoch_index": 0,
        "owner_coldkey": owner_coldkey,
        "owner_hotkey": owner_hotkey,
        "owner_emission": 0,
        "name": f"slmnet-{netuid}",
        "symbol": "α",
        "registrations": {"block": block, "count": 0},
    }
    save_subnet(conn, netuid, hp, state)


def account(conn: sqlite3.Connection, address: str) -> tuple[int, int]:
    """(free rao, nonce) of an account; (0, 0) for one never seen."""
    row = conn.execute("SELECT free, nonce FROM accounts WHERE address = ?", (address,)).fetchone()
    return (int(row["free"]), int(row["nonce"])) if row else (0, 0)


def set_account(conn: sqlite3.Connection, address: str, free: int, nonce: int) -> None:
    conn.execute(
        "INSERT INTO accounts VALUES (?, ?, ?) ON CONFLICT (address) DO UPDATE SET free = excluded.free, nonce = excluded.nonce",
        (address, free, nonce),
    )


def add_stake(conn: sqlite3.Connection, hotkey: str, coldkey: str, netuid: int, rao: int) -> None:
    conn.execute(
        "INSERT INTO stakes VALUES (?, ?, ?, ?) ON CONFLICT (hotkey, coldkey, netuid) DO UPDATE SET rao = rao + excluded.rao",
        (hotkey, coldkey, netuid, rao),
    )


def hotkey_stake(conn: sqlite3.Connection, netuid: int) -> dict[str, int]:
    """Total stake (rao) behind each hotkey on a subnet."""
    rows = conn.execute("SELECT hotkey, SUM(rao) AS total FROM stakes WHERE netuid = ? GROUP BY hotkey", (netuid,))
    return {r["hotkey"]: int(r["total"]) for r in rows}


def neurons(conn: sqlite3.Connection, netuid: int) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM neurons WHERE netuid = ? ORDER BY uid", (netuid,)).fetchall()


def uid_of(conn: sqlite3.Connection, netuid: int, hotkey: str) -> int | None:
    row = conn.execute("SELECT uid FROM neurons WHERE netuid = ? AND hotkey = ?", (netuid, hotkey)).fetchone()
    return None if row is None else int(row["uid"])


def registered_uid(conn: sqlite3.Connection, netuid: int, hotkey: str) -> int:
    subnet(conn, netuid)
    uid = uid_of(conn, netuid, hotkey)
    if uid is None:
        raise DispatchError("HotKeyNotRegisteredInSubNet", f"The hotkey {hotkey} is not registered on subnet {netuid}.")
    return uid

"""The localnet's epochs: when they fall, catching up on missed blocks, and the Yuma epoch itself (permits, consensus, incentive, bonds, dividends, emission)."""

from __future__ import annotations

import sqlite3

import numpy as np

from . import codec, yuma
from .runtime import add_stake, hotkey_stake, neurons, save_subnet, subnet
from .store import U16_MAX
from .weights import expire_weight_commits


def next_epoch_block(netuid: int, tempo: int, after: int) -> int:
    """The first epoch block strictly after ``after``: subtensor runs a subnet's epoch when
    (block + netuid + 1) % (tempo + 1) == 0."""
    period = tempo + 1
    return after + 1 + (-(after + 1 + netuid + 1)) % period


def refresh_validator_permits(conn: sqlite3.Connection, netuid: int) -> None:
    """Permits go to the top ``max_allowed_validators`` uids by stake (non-zero only)."""
    hp, _ = subnet(conn, netuid)
    stakes = hotkey_stake(conn, netuid)
    rows = neurons(conn, netuid)
    ranked = sorted((r for r in rows if stakes.get(r["hotkey"], 0) > 0), key=lambda r: (-stakes[r["hotkey"]], r["uid"]))
    permitted = {r["uid"] for r in ranked[: hp["max_allowed_validators"]]}
    for r in rows:
        conn.execute("UPDATE neurons SET validator_permit = ? WHERE netuid = ? AND uid = ?", (int(r["uid"] in permitted), netuid, r["uid"]))


def catch_up(conn: sqlite3.Connection, block: int) -> int:
    """Run every epoch due up to and including ``block``; returns how many ran."""
    ran = 0
    for row in conn.execute("SELECT netuid FROM subnets").fetchall():
        netuid = int(row["netuid"])
        while True:
            hp, state = subnet(conn, netuid)
            due = next_epoch_block(netuid, hp["tempo"], state["last_epoch_block"])
            if hp["tempo"] <= 0 or due > block:
                break
            run_epoch(conn, netuid, due)
            ran += 1
    return ran


def pending_epochs(conn: sqlite3.Connection, block: int) -> bool:
    for row in conn.execute("SELECT hp, state, netuid FROM subnets"):
        hp, state = codec.from_json(row["hp"]), codec.from_json(row["state"])
        if hp["tempo"] > 0 and next_epoch_block(int(row["netuid"]), hp["tempo"], state["last_epoch_block"]) <= block:
            return True
    return False


def _matrix(rows: list[sqlite3.Row], column: str, n: int) -> np.ndarray:
    m = np.zeros((n, n))
    for r in rows:
        for dest, value in codec.from_json(r[column]):
            if dest < n:
                m[r["uid"], dest] = value
    return m


def run_epoch(conn: sqlite3.Connection, netuid: int, block: int) -> None:
    """One Yuma epoch at ``block``: scores, bonds, emission into stake, permits."""
    hp, state = subnet(conn, netuid)
    rows = neurons(conn, netuid)
    n = len(rows)
    emission_total = hp["emission_per_block"] * (block - state["last_epoch_block"])
    if n:
        stakes = hotkey_stake(conn, netuid)
        weights = _matrix(rows, "weights", n)
        # Weights set before a miner (re)registered describe the previous owner of the uid.
        for r in rows:
            for other in rows:
                if weights[other["uid"], r["uid"]] and other["last_update"] < r["registered_at"]:
                    weights[other["uid"], r["uid"]] = 0.0
        result = yuma.epoch(
            yuma.EpochInput(
                stake=np.array([stakes.get(r["hotkey"], 0) for r in rows], dtype=float),
                validator_permit=np.array([bool(r["validator_permit"]) for r in rows]),
                weights=weights,
                bonds=_matrix(rows, "bonds", n),
                active=np.array([block - r["last_update"] <= hp["activity_cutoff"] for r in rows]),
                kappa=hp["kappa"] / U16_MAX,
                bonds_alpha=1 - hp["bonds_moving_avg"] / 1_000_000,
            )
        )
        miner_em, validator_em, owner_em = yuma.emission_split(emission_total, result.incentive, result.dividends)
        for r in rows:
            uid = r["uid"]
            earned = int(miner_em[uid] + validator_em[uid])
            scores = {
                "rank": float(result.rank[uid]),
                "trust": float(result.trust[uid]),
                "consensus": float(result.consensus[uid]),
                "incentive": float(result.incentive[uid]),
                "dividends": float(result.dividends[uid]),
                "validator_trust": float(result.validator_trust[uid]),
                "emission": earned,
                "pruning_score": float(result.incentive[uid] + result.dividends[uid]),
            }
            bonds = [[j, float(v)] for j, v in enumerate(result.bonds[uid]) if v > 0]
            conn.execute(
                "UPDATE neurons SET scores = ?, bonds = ? WHERE netuid = ? AND uid = ?",
                (codec.to_json(scores), codec.to_json(bonds), netuid, uid),
            )
            if earned:
                add_stake(conn, r["hotkey"], r["coldkey"], netuid, earned)
    else:
        owner_em = emission_total
    state["owner_emission"] = state.get("owner_emission", 0) + int(owner_em)
    state["last_epoch_block"] = block
    state["epoch_index"] += 1
    save_subnet(conn, netuid, hp, state)
    expire_weight_commits(conn, netuid, hp, state)
    refresh_validator_permits(conn, netuid)

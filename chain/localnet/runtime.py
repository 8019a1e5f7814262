"""The localnet's state transition: subnets, epochs, and the extrinsics it dispatches.

Each function here runs inside one ``store.write`` transaction. A dispatch that fails
raises :class:`DispatchError` with the chain's own error name, and the caller rolls
the transaction back, so a failed extrinsic changes nothing (the nonce included,
unlike a real chain which keeps the fee; the localnet charges no fees).
"""

from __future__ import annotations

import ipaddress
import sqlite3
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Callable

import numpy as np
from bittensor.sp_core import ss58_decode

from . import codec, yuma
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


def _registered_uid(conn: sqlite3.Connection, netuid: int, hotkey: str) -> int:
    subnet(conn, netuid)
    uid = uid_of(conn, netuid, hotkey)
    if uid is None:
        raise DispatchError("HotKeyNotRegisteredInSubNet", f"The hotkey {hotkey} is not registered on subnet {netuid}.")
    return uid


# --- Epochs ------------------------------------------------------------------------


def is_epoch_block(netuid: int, tempo: int, block: int) -> bool:
    """subtensor's schedule: a subnet runs its epoch when (block + netuid + 1) % (tempo + 1) == 0."""
    return tempo > 0 and (block + netuid + 1) % (tempo + 1) == 0


def next_epoch_block(netuid: int, tempo: int, after: int) -> int:
    """The first epoch block strictly after ``after``."""
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
    _expire_weight_commits(conn, netuid, hp, state)
    refresh_validator_permits(conn, netuid)


# --- Extrinsics --------------------------------------------------------------------

Handler = Callable[[Context, str, dict], None]
HANDLERS: dict[tuple[str, str], Handler] = {}


def handles(module: str, *functions: str) -> Callable[[Handler], Handler]:
    def decorate(fn: Handler) -> Handler:
        for function in functions:
            HANDLERS[(module, function)] = fn
        return fn

    return decorate


def dispatch(ctx: Context, signer: str, module: str, function: str, params: dict) -> None:
    handler = HANDLERS.get((module, function))
    if handler is None:
        raise DispatchError("CallFiltered", f"The localnet does not implement {module}.{function}.")
    handler(ctx, signer, params)


@handles("SubtensorModule", "burned_register")
def burned_register(ctx: Context, coldkey: str, p: dict) -> None:
    netuid, hotkey = int(p["netuid"]), str(p["hotkey"])
    hp, state = subnet(ctx.conn, netuid)
    if not hp["registration_allowed"]:
        raise DispatchError("SubNetRegistrationDisabled", f"Registration is disabled on subnet {netuid}.")
    if uid_of(ctx.conn, netuid, hotkey) is not None:
        raise DispatchError("HotKeyAlreadyRegisteredInSubNet", f"The hotkey {hotkey} is already registered on subnet {netuid}.")
    owner = ctx.conn.execute("SELECT coldkey FROM owners WHERE hotkey = ?", (hotkey,)).fetchone()
    if owner is not None and owner["coldkey"] != coldkey:
        raise DispatchError("NonAssociatedColdKey", f"The hotkey {hotkey} belongs to another coldkey.")
    counter = state["registrations"]
    if counter["block"] != ctx.block:
        counter = {"block": ctx.block, "count": 0}
    if counter["count"] >= hp["max_registrations_per_block"]:
        raise DispatchError("TooManyRegistrationsThisBlock", "Too many registrations in this block; retry in the next one.")
    free, nonce = account(ctx.conn, coldkey)
    if free < hp["burn"]:
        raise DispatchError("NotEnoughBalanceToStake", f"Registration costs {hp['burn'] / RAO_PER_TAO} TAO; the coldkey has {free / RAO_PER_TAO} TAO.")
    set_account(ctx.conn, coldkey, free - hp["burn"], nonce)
    uid = _free_uid(ctx, netuid, hp)
    ctx.conn.execute("DELETE FROM neurons WHERE netuid = ? AND uid = ?", (netuid, uid))
    ctx.conn.execute(
        "INSERT INTO neurons (netuid, uid, hotkey, coldkey, registered_at) VALUES (?, ?, ?, ?, ?)",
        (netuid, uid, hotkey, coldkey, ctx.block),
    )
    ctx.conn.execute("INSERT OR IGNORE INTO owners VALUES (?, ?)", (hotkey, coldkey))
    counter["count"] += 1
    state["registrations"] = counter
    save_subnet(ctx.conn, netuid, hp, state)
    ctx.emit("SubtensorModule", "NeuronRegistered", netuid=netuid, uid=uid, hotkey=hotkey)


def _free_uid(ctx: Context, netuid: int, hp: dict) -> int:
    """The next uid, or on a full subnet the non-immune uid with the lowest pruning score."""
    rows = neurons(ctx.conn, netuid)
    if len(rows) < hp["max_uids"]:
        return len(rows)
    candidates = [r for r in rows if ctx.block - r["registered_at"] >= hp["immunity_period"]]
    if not candidates:
        raise DispatchError("NoNeuronIdAvailable", f"Subnet {netuid} is full and every neuron is still immune.")
    victim = min(candidates, key=lambda r: (codec.from_json(r["scores"]).get("pruning_score", 0.0), r["registered_at"], r["uid"]))
    uid = int(victim["uid"])
    ctx.conn.execute("DELETE FROM commitments WHERE netuid = ? AND hotkey = ?", (netuid, victim["hotkey"]))
    ctx.emit("SubtensorModule", "NeuronPruned", netuid=netuid, uid=uid, hotkey=victim["hotkey"])
    return uid


@handles("SubtensorModule", "serve_axon")
def serve_axon(ctx: Context, hotkey: str, p: dict) -> None:
    netuid = int(p["netuid"])
    uid = _registered_uid(ctx.conn, netuid, hotkey)
    hp, _ = subnet(ctx.conn, netuid)
    ip_type, ip, port = int(p["ip_type"]), int(p["ip"]), int(p["port"])
    if ip_type not in (4, 6):
        raise DispatchError("InvalidIpType", f"ip_type must be 4 or 6, got {ip_type}.")
    try:
        address = ipaddress.IPv4Address(ip) if ip_type == 4 else ipaddress.IPv6Address(ip)
    except ValueError as exc:
        raise DispatchError("InvalidIpAddress", f"{ip} is not an IPv{ip_type} address.") from exc
    if address.is_unspecified or not 0 < port < 65536:
        raise DispatchError("InvalidIpAddress", f"{address}:{port} is not a servable endpoint.")
    row = ctx.conn.execute("SELECT axon FROM neurons WHERE netuid = ? AND uid = ?", (netuid, uid)).fetchone()
    previous = codec.from_json(row["axon"]) if row["axon"] else None
    if previous and hp["serving_rate_limit"] and ctx.block - previous["block"] < hp["serving_rate_limit"]:
        raise DispatchError("ServingRateLimitExceeded", f"Endpoints may change once every {hp['serving_rate_limit']} blocks.")
    axon = {
        "block": ctx.block,
        "version": int(p["version"]),
        "ip": ip,
        "port": port,
        "ip_type": ip_type,
        "protocol": int(p["protocol"]),
        "placeholder1": int(p.get("placeholder1", 0)),
        "placeholder2": int(p.get("placeholder2", 0)),
    }
    ctx.conn.execute("UPDATE neurons SET axon = ? WHERE netuid = ? AND uid = ?", (codec.to_json(axon), netuid, uid))
    ctx.emit("SubtensorModule", "AxonServed", netuid=netuid, hotkey=hotkey)


@handles("Commitments", "set_commitment")
def set_commitment(ctx: Context, hotkey: str, p: dict) -> None:
    netuid = int(p["netuid"])
    subnet(ctx.conn, netuid)
    if uid_of(ctx.conn, netuid, hotkey) is None:
        raise DispatchError("AccountNotAllowedCommit", f"Only hotkeys registered on subnet {netuid} may publish commitments.")
    fields = list((p.get("info") or {}).get("fields") or [])
    if len(fields) > MAX_COMMITMENT_FIELDS:
        raise DispatchError("TooManyFieldsInCommitmentInfo", f"A commitment holds at most {MAX_COMMITMENT_FIELDS} fields.")
    normalized = [_commitment_field(f) for f in fields]
    ctx.conn.execute(
        "INSERT INTO commitments VALUES (?, ?, ?, 0, ?) ON CONFLICT (netuid, hotkey) DO UPDATE SET block = excluded.block, info = excluded.info",
        (netuid, hotkey, ctx.block, codec.to_json({"fields": normalized})),
    )
    ctx.emit("Commitments", "Commitment", netuid=netuid, who=hotkey)


def _commitment_field(entry: Any) -> Any:
    """Validate one ``Data`` variant; Raw payloads are stored as 0x-hex like the chain returns them."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise DispatchError("BadCommitmentField", f"Unsupported commitment field {entry!r}.")
    ((variant, value),) = entry.items()
    if variant.startswith("Raw"):
        data = value if isinstance(value, bytes) else bytes.fromhex(str(value).removeprefix("0x"))
        if variant != f"Raw{len(data)}" or len(data) > 128:
            raise DispatchError("BadCommitmentField", f"{variant} cannot carry {len(data)} bytes.")
        return {variant: "0x" + data.hex()}
    raise DispatchError("BadCommitmentField", f"The localnet stores Raw commitment fields only, not {variant}.")


@handles("SubtensorModule", "set_mechanism_weights", "set_weights")
def set_weights(ctx: Context, hotkey: str, p: dict) -> None:
    netuid = int(p["netuid"])
    hp, _ = subnet(ctx.conn, netuid)
    if hp["commit_reveal_weights_enabled"]:
        raise DispatchError("CommitRevealEnabled", f"Subnet {netuid} requires commit-reveal; commit the weights instead.")
    _apply_weights(ctx, netuid, hotkey, list(p["dests"]), list(p["weights"]), int(p.get("version_key", 0)))


def _apply_weights(ctx: Context, netuid: int, hotkey: str, dests: list, values: list, version_key: int) -> None:
    hp, _ = subnet(ctx.conn, netuid)
    uid = _registered_uid(ctx.conn, netuid, hotkey)
    row = ctx.conn.execute("SELECT * FROM neurons WHERE netuid = ? AND uid = ?", (netuid, uid)).fetchone()
    n = ctx.conn.execute("SELECT COUNT(*) FROM neurons WHERE netuid = ?", (netuid,)).fetchone()[0]
    dests, values = [int(d) for d in dests], [int(v) for v in values]
    self_only = dests == [uid]
    if version_key < hp["weights_version"]:
        raise DispatchError("IncorrectWeightVersionKey", f"version_key {version_key} is older than the subnet's {hp['weights_version']}.")
    if not self_only and not row["validator_permit"]:
        raise DispatchError("NeuronNoValidatorPermit", f"uid {uid} has no validator permit on subnet {netuid}.")
    stake = hotkey_stake(ctx.conn, netuid).get(hotkey, 0)
    if stake < hp["min_stake_to_set_weights"]:
        raise DispatchError("NotEnoughStakeToSetWeights", f"Setting weights needs {hp['min_stake_to_set_weights'] / RAO_PER_TAO} TAO of stake.")
    if len(dests) != len(values):
        raise DispatchError("WeightVecNotEqualSize", "dests and weights differ in length.")
    if len(set(dests)) != len(dests):
        raise DispatchError("DuplicateUids", "A uid appears twice in the weights.")
    invalid = [d for d in dests if not 0 <= d < n]
    if invalid:
        raise DispatchError("UidVecContainInvalidOne", f"No neuron at uid(s) {invalid} on subnet {netuid} ({n} uids).")
    if any(not 0 <= v <= U16_MAX for v in values):
        raise DispatchError("InvalidWeightValue", "Weights must be u16 values.")
    if not self_only and len(dests) < min(hp["min_allowed_weights"], n):
        raise DispatchError("WeightVecLengthIsLow", f"At least {hp['min_allowed_weights']} weights are required.")
    total = sum(values)
    if not self_only and total and len(dests) > 1 and max(values) * U16_MAX > hp["max_weight_limit"] * total:
        raise DispatchError("MaxWeightExceeded", f"One weight exceeds the max weight limit {hp['max_weight_limit'] / U16_MAX:.4f}.")
    last = int(row["last_update"])
    if hp["weights_rate_limit"] and last > 0 and ctx.block - last < hp["weights_rate_limit"]:
        raise DispatchError("SettingWeightsTooFast", f"Weights were set {ctx.block - last} blocks ago; the rate limit is {hp['weights_rate_limit']} blocks.")
    top = max(values) if values else 0
    scaled = [[d, v / top] for d, v in zip(dests, values) if v] if top else []
    ctx.conn.execute(
        "UPDATE neurons SET weights = ?, last_update = ? WHERE netuid = ? AND uid = ?",
        (codec.to_json(scaled), ctx.block, netuid, uid),
    )
    ctx.emit("SubtensorModule", "WeightsSet", netuid=netuid, uid=uid)


# --- Commit-reveal -----------------------------------------------------------------


def legacy_commit_hash(hotkey_public_key: bytes, netuid: int, uids: list[int], values: list[int], salt: list[int], version_key: int) -> bytes:
    """subtensor's hash for salted commits: BlakeTwo256 over the SCALE encoding of
    (AccountId32, u16 netuid, Vec<u16> uids, Vec<u16> values, Vec<u16> salt, u64 version_key)."""

    def vec_u16(items: list[int]) -> bytes:
        return _compact(len(items)) + b"".join(int(i).to_bytes(2, "little") for i in items)

    encoded = hotkey_public_key + int(netuid).to_bytes(2, "little") + vec_u16(uids) + vec_u16(values) + vec_u16(salt) + int(version_key).to_bytes(8, "little")
    return blake2b(encoded, digest_size=32).digest()


def _compact(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n << 2])
    if n < 1 << 14:
        return ((n << 2) | 1).to_bytes(2, "little")
    return ((n << 2) | 2).to_bytes(4, "little")


def _require_commit_reveal(conn: sqlite3.Connection, netuid: int, hotkey: str) -> tuple[dict, dict]:
    hp, state = subnet(conn, netuid)
    if not hp["commit_reveal_weights_enabled"]:
        raise DispatchError("CommitRevealDisabled", f"Commit-reveal is disabled on subnet {netuid}; set weights directly.")
    _registered_uid(conn, netuid, hotkey)
    pending = conn.execute("SELECT COUNT(*) FROM weight_commits WHERE netuid = ? AND hotkey = ?", (netuid, hotkey)).fetchone()[0]
    if pending >= MAX_UNREVEALED_COMMITS:
        raise DispatchError("TooManyUnrevealedCommits", f"At most {MAX_UNREVEALED_COMMITS} unrevealed commits per hotkey.")
    return hp, state


@handles("SubtensorModule", "commit_mechanism_weights", "commit_weights")
def commit_weights(ctx: Context, hotkey: str, p: dict) -> None:
    netuid = int(p["netuid"])
    _, state = _require_commit_reveal(ctx.conn, netuid, hotkey)
    commit_hash = p["commit_hash"]
    digest = commit_hash if isinstance(commit_hash, bytes) else bytes.fromhex(str(commit_hash).removeprefix("0x"))
    ctx.conn.execute(
        "INSERT INTO weight_commits (netuid, hotkey, block, epoch, kind, commit_data) VALUES (?, ?, ?, ?, 'hash', ?)",
        (netuid, hotkey, ctx.block, state["epoch_index"], codec.to_json(digest)),
    )
    ctx.emit("SubtensorModule", "WeightsCommitted", netuid=netuid, hotkey=hotkey)


@handles("SubtensorModule", "commit_timelocked_mechanism_weights", "commit_timelocked_weights", "commit_crv3_mechanism_weights")
def commit_timelocked(ctx: Context, hotkey: str, p: dict) -> None:
    """Recorded as the chain records it. Revealing needs the drand beacon's signature
    for ``reveal_round``, which cannot be had offline, so these never apply here."""
    netuid = int(p["netuid"])
    _, state = _require_commit_reveal(ctx.conn, netuid, hotkey)
    ctx.conn.execute(
        "INSERT INTO weight_commits (netuid, hotkey, block, epoch, kind, commit_data, reveal_round) VALUES (?, ?, ?, ?, 'timelock', ?, ?)",
        (netuid, hotkey, ctx.block, state["epoch_index"], codec.to_json(p["commit"]), int(p["reveal_round"])),
    )
    ctx.emit("SubtensorModule", "TimelockedWeightsCommitted", netuid=netuid, hotkey=hotkey, reveal_round=int(p["reveal_round"]))


@handles("SubtensorModule", "reveal_mechanism_weights", "reveal_weights")
def reveal_weights(ctx: Context, hotkey: str, p: dict) -> None:
    netuid = int(p["netuid"])
    hp, state = subnet(ctx.conn, netuid)
    if not hp["commit_reveal_weights_enabled"]:
        raise DispatchError("CommitRevealDisabled", f"Commit-reveal is disabled on subnet {netuid}.")
    commits = ctx.conn.execute("SELECT * FROM weight_commits WHERE netuid = ? AND hotkey = ? AND kind = 'hash' ORDER BY id", (netuid, hotkey)).fetchall()
    if not commits:
        raise DispatchError("NoWeightsCommitFound", f"No weight commit from {hotkey} on subnet {netuid}.")
    uids, values, salt = list(p["uids"]), list(p["values"]), list(p["salt"])
    # the chain hashes the raw 32-byte public key of the hotkey
    digest = legacy_commit_hash(bytes(ss58_decode(hotkey)), netuid, uids, values, salt, int(p["version_key"]))
    match = next((c for c in commits if codec.from_json(c["commit_data"]) == digest), None)
    if match is None:
        raise DispatchError("InvalidRevealCommitHashNotMatch", "The revealed weights do not match any commit.")
    reveal_epoch = match["epoch"] + hp["reveal_period_epochs"]
    if state["epoch_index"] < reveal_epoch:
        raise DispatchError("RevealTooEarly", f"This commit can be revealed from epoch {reveal_epoch}; the subnet is at epoch {state['epoch_index']}.")
    ctx.conn.execute("DELETE FROM weight_commits WHERE id = ?", (match["id"],))
    _apply_weights(ctx, netuid, hotkey, uids, values, int(p["version_key"]))
    ctx.emit("SubtensorModule", "WeightsRevealed", netuid=netuid, hotkey=hotkey)


def _expire_weight_commits(conn: sqlite3.Connection, netuid: int, hp: dict, state: dict) -> None:
    """Salted commits not revealed in their reveal epoch expire, as on chain."""
    conn.execute(
        "DELETE FROM weight_commits WHERE netuid = ? AND kind = 'hash' AND epoch + ? < ?",
        (netuid, hp["reveal_period_epochs"], state["epoch_index"]),
    )


@handles("Balances", "transfer_keep_alive", "transfer_allow_death")
def transfer(ctx: Context, sender: str, p: dict) -> None:
    dest = p["dest"]
    dest = dest.get("Id") if isinstance(dest, dict) else str(dest)
    value = int(p["value"])
    free, nonce = account(ctx.conn, sender)
    if value <= 0 or free < value:
        raise DispatchError("InsufficientBalance", f"Cannot transfer {value / RAO_PER_TAO} TAO with {free / RAO_PER_TAO} TAO free.")
    set_account(ctx.conn, sender, free - value, nonce)
    dest_free, dest_nonce = account(ctx.conn, dest)
    set_account(ctx.conn, dest, dest_free + value, dest_nonce)
    ctx.emit("Balances", "Transfer", **{"from": sender, "to": dest, "amount": value})

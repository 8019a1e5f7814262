"""SubtensorModule extrinsics for weights: set, commit (hashed or timelocked), reveal, and expiring unrevealed commits."""

from __future__ import annotations

import sqlite3
from hashlib import blake2b

from bittensor.sp_core import ss58_decode

from . import codec
from .runtime import MAX_UNREVEALED_COMMITS, Context, DispatchError, hotkey_stake, registered_uid, subnet
from .store import RAO_PER_TAO, U16_MAX


def set_weights(ctx: Context, hotkey: str, p: dict) -> None:
    netuid = int(p["netuid"])
    hp, _ = subnet(ctx.conn, netuid)
    if hp["commit_reveal_weights_enabled"]:
        raise DispatchError("CommitRevealEnabled", f"Subnet {netuid} requires commit-reveal; commit the weights instead.")
    _apply_weights(ctx, netuid, hotkey, list(p["dests"]), list(p["weights"]), int(p.get("version_key", 0)))


def _apply_weights(ctx: Context, netuid: int, hotkey: str, dests: list, values: list, version_key: int) -> None:
    hp, _ = subnet(ctx.conn, netuid)
    uid = registered_uid(ctx.conn, netuid, hotkey)
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
    ever_set = last > 0 or row["weights"] != "[]"  # weights first set in block 0 leave last_update 0
    if hp["weights_rate_limit"] and ever_set and ctx.block - last < hp["weights_rate_limit"]:
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
    registered_uid(conn, netuid, hotkey)
    pending = conn.execute("SELECT COUNT(*) FROM weight_commits WHERE netuid = ? AND hotkey = ?", (netuid, hotkey)).fetchone()[0]
    if pending >= MAX_UNREVEALED_COMMITS:
        raise DispatchError("TooManyUnrevealedCommits", f"At most {MAX_UNREVEALED_COMMITS} unrevealed commits per hotkey.")
    return hp, state


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


def expire_weight_commits(conn: sqlite3.Connection, netuid: int, hp: dict, state: dict) -> None:
    """Salted commits not revealed in their reveal epoch expire, as on chain."""
    conn.execute(
        "DELETE FROM weight_commits WHERE netuid = ? AND kind = 'hash' AND epoch + ? < ?",
        (netuid, hp["reveal_period_epochs"], state["epoch_index"]),
    )

"""Answers to the SDK's storage queries and runtime-API calls, from localnet state.

Values come back in the shapes the SDK (bittensor 11.3.0) decodes from a real node: scores as u16 fractions, amounts in rao,
axons as ``{ip: int, port, ip_type, ...}``. Reads see the current state whatever
block hash they are pinned to: the localnet keeps no history.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from . import codec, runtime
from .runtime import DispatchError
from .store import U16_MAX, read_genesis

GLOBAL_MAX_SUBNET_COUNT = 4096

Reader = Callable[[sqlite3.Connection, int, list], Any]
STORAGE: dict[tuple[str, str], Reader] = {}
MAPS: dict[tuple[str, str], Reader] = {}
RUNTIME: dict[tuple[str, str], Reader] = {}


class UnknownRead(LookupError):
    """The SDK asked for storage or an API the localnet does not model."""


def _register(table: dict, module: str, *names: str) -> Callable[[Reader], Reader]:
    def decorate(fn: Reader) -> Reader:
        for name in names:
            table[(module, name)] = fn
        return fn

    return decorate


def storage(module: str, *names: str) -> Callable[[Reader], Reader]:
    return _register(STORAGE, module, *names)


def storage_map(module: str, *names: str) -> Callable[[Reader], Reader]:
    return _register(MAPS, module, *names)


def runtime_api(api: str, *methods: str) -> Callable[[Reader], Reader]:
    return _register(RUNTIME, api, *methods)


def query(conn: sqlite3.Connection, block: int, module: str, name: str, params: list) -> Any:
    reader = STORAGE.get((module, name))
    if reader is None:
        raise UnknownRead(f"the localnet does not model storage {module}.{name}")
    return reader(conn, block, list(params or []))


def query_map(conn: sqlite3.Connection, block: int, module: str, name: str, params: list) -> list[tuple[Any, Any]]:
    reader = MAPS.get((module, name))
    if reader is None:
        raise UnknownRead(f"the localnet does not model storage map {module}.{name}")
    return reader(conn, block, list(params or []))


def runtime_call(conn: sqlite3.Connection, block: int, api: str, method: str, params: list) -> Any:
    reader = RUNTIME.get((api, method))
    if reader is None:
        raise UnknownRead(f"the localnet does not implement runtime API {api}.{method}")
    return reader(conn, block, list(params or []))


def _hp(conn: sqlite3.Connection, netuid: int) -> dict | None:
    try:
        return runtime.subnet(conn, netuid)[0]
    except DispatchError:
        return None


def _hyperparameter(name: str, default: Any = None) -> Reader:
    def read(conn: sqlite3.Connection, block: int, params: list) -> Any:
        hp = _hp(conn, int(params[0]))
        return default if hp is None else hp[name]

    return read


for _item, _name in {
    "Tempo": "tempo",
    "WeightsSetRateLimit": "weights_rate_limit",
    "MinAllowedWeights": "min_allowed_weights",
    "MaxWeightsLimit": "max_weight_limit",
    "CommitRevealWeightsEnabled": "commit_reveal_weights_enabled",
    "RevealPeriodEpochs": "reveal_period_epochs",
    "Burn": "burn",
    "CollateralLockShare": "collateral_lock_share",
    "MaxAllowedUids": "max_uids",
    "MaxAllowedValidators": "max_allowed_validators",
    "ImmunityPeriod": "immunity_period",
    "ActivityCutoff": "activity_cutoff",
    "Kappa": "kappa",
    "WeightsVersionKey": "weights_version",
    "ServingRateLimit": "serving_rate_limit",
    "NetworkRegistrationAllowed": "registration_allowed",
    "MaxRegistrationsPerBlock": "max_registrations_per_block",
}.items():
    STORAGE[("SubtensorModule", _item)] = _hyperparameter(_name)


def _state(key: str) -> Reader:
    def read(conn: sqlite3.Connection, block: int, params: list) -> Any:
        try:
            return runtime.subnet(conn, int(params[0]))[1][key]
        except DispatchError:
            return None

    return read


STORAGE[("SubtensorModule", "LastEpochBlock")] = _state("last_epoch_block")
STORAGE[("SubtensorModule", "SubnetEpochIndex")] = _state("epoch_index")
STORAGE[("SubtensorModule", "NetworkRegisteredAt")] = _state("registered_at")
STORAGE[("SubtensorModule", "SubnetOwner")] = _state("owner_coldkey")
STORAGE[("SubtensorModule", "SubnetOwnerHotkey")] = _state("owner_hotkey")


@storage("SubtensorModule", "PendingEpochAt")
def _pending_epoch_at(conn, block, params):
    return 0


@storage("SubtensorModule", "SubnetEpochConsensus")
def _consensus_mode(conn, block, params):
    return "Yuma" if _hp(conn, int(params[0])) is not None else None


@storage("SubtensorModule", "BlocksSinceLastStep")
def _blocks_since_last_step(conn, block, params):
    last = _state("last_epoch_block")(conn, block, params)
    return None if last is None else block - last


@storage("SubtensorModule", "NetworksAdded")
def _network_added(conn, block, params):
    return _hp(conn, int(params[0])) is not None


@storage("SubtensorModule", "SubnetworkN")
def _subnetwork_n(conn, block, params):
    return conn.execute("SELECT COUNT(*) FROM neurons WHERE netuid = ?", (int(params[0]),)).fetchone()[0]


@storage("SubtensorModule", "Uids")
def _uids(conn, block, params):
    return runtime.uid_of(conn, int(params[0]), str(params[1]))


@storage("SubtensorModule", "Keys")
def _keys(conn, block, params):
    row = conn.execute("SELECT hotkey FROM neurons WHERE netuid = ? AND uid = ?", (int(params[0]), int(params[1]))).fetchone()
    return None if row is None else row["hotkey"]


@storage("SubtensorModule", "Owner")
def _owner(conn, block, params):
    row = conn.execute("SELECT coldkey FROM owners WHERE hotkey = ?", (str(params[0]),)).fetchone()
    return None if row is None else row["coldkey"]


def _column(name: str, convert: Callable[[sqlite3.Row], Any]) -> Reader:
    def read(conn: sqlite3.Connection, block: int, params: list) -> Any:
        netuid = int(params[0]) % GLOBAL_MAX_SUBNET_COUNT  # mechanism 0 storage index = netuid
        return [convert(r) for r in runtime.neurons(conn, netuid)]

    read.__name__ = name
    return read


STORAGE[("SubtensorModule", "LastUpdate")] = _column("LastUpdate", lambda r: int(r["last_update"]))
STORAGE[("SubtensorModule", "ValidatorPermit")] = _column("ValidatorPermit", lambda r: bool(r["validator_permit"]))
STORAGE[("SubtensorModule", "Active")] = _column("Active", lambda r: True)
for _item, _score in {
    "Incentive": "incentive",
    "Dividends": "dividends",
    "Consensus": "consensus",
    "Trust": "trust",
    "Rank": "rank",
    "ValidatorTrust": "validator_trust",
}.items():

    def _score_of(r: sqlite3.Row, s: str = _score) -> int:
        return _u16(codec.from_json(r["scores"]).get(s, 0.0))

    STORAGE[("SubtensorModule", _item)] = _column(_item, _score_of)


@storage("Timestamp", "Now")
def _timestamp_now(conn, block, params):
    """Milliseconds since the epoch at ``block``: blocks follow the clock from genesis."""
    genesis = read_genesis(conn)
    return int((genesis.genesis_time + block * genesis.block_time) * 1000)


@storage("System", "Account")
def _system_account(conn, block, params):
    free, nonce = runtime.account(conn, str(params[0]))
    return {"nonce": nonce, "consumers": 0, "providers": 1, "sufficients": 0, "data": {"free": free, "reserved": 0, "frozen": 0, "flags": 0}}


@storage_map("SubtensorModule", "Uids")
def _uids_map(conn, block, params):
    return [(r["hotkey"], int(r["uid"])) for r in runtime.neurons(conn, int(params[0]))]


@storage_map("SubtensorModule", "Weights")
def _weights_map(conn, block, params):
    return [
        (int(r["uid"]), _u16_row(codec.from_json(r["weights"])))
        for r in runtime.neurons(conn, int(params[0]) % GLOBAL_MAX_SUBNET_COUNT)
        if r["weights"] != "[]"
    ]


@storage_map("SubtensorModule", "Bonds")
def _bonds_map(conn, block, params):
    return [
        (int(r["uid"]), _u16_row(codec.from_json(r["bonds"]))) for r in runtime.neurons(conn, int(params[0]) % GLOBAL_MAX_SUBNET_COUNT) if r["bonds"] != "[]"
    ]


def _subnet_column(key: str) -> Reader:
    def read(conn: sqlite3.Connection, block: int, params: list) -> list:
        out = []
        for row in conn.execute("SELECT netuid, hp, state FROM subnets ORDER BY netuid"):
            merged = {**codec.from_json(row["hp"]), **codec.from_json(row["state"]), "added": True}
            out.append((int(row["netuid"]), merged[key]))
        return out

    return read


MAPS[("SubtensorModule", "NetworksAdded")] = _subnet_column("added")
MAPS[("SubtensorModule", "Tempo")] = _subnet_column("tempo")
MAPS[("SubtensorModule", "Burn")] = _subnet_column("burn")
MAPS[("SubtensorModule", "TokenSymbol")] = _subnet_column("symbol")


@storage_map("SubtensorModule", "SubnetworkN")
def _subnetwork_n_map(conn, block, params):
    return [
        (int(r["netuid"]), int(r["n"]))
        for r in conn.execute("SELECT s.netuid, COUNT(n.uid) AS n FROM subnets s LEFT JOIN neurons n USING (netuid) GROUP BY s.netuid")
    ]


@storage_map("Commitments", "CommitmentOf")
def _commitment_of(conn, block, params):
    rows = conn.execute("SELECT * FROM commitments WHERE netuid = ?", (int(params[0]),))
    return [(r["hotkey"], {"deposit": int(r["deposit"]), "block": int(r["block"]), "info": codec.from_json(r["info"])}) for r in rows]


@storage_map("Commitments", "RevealedCommitments")
def _revealed_commitments(conn, block, params):
    return []  # only timelocked commitments are revealed, and those need drand


@storage_map("SubtensorModule", "TimelockedWeightCommits", "CRV3WeightCommitsV2")
def _timelocked_commits(conn, block, params):
    rows = conn.execute("SELECT * FROM weight_commits WHERE netuid = ? AND kind = 'timelock' ORDER BY id", (int(params[0]) % GLOBAL_MAX_SUBNET_COUNT,))
    return [(r["epoch"], (r["hotkey"], r["block"], codec.from_json(r["commit_data"]), r["reveal_round"])) for r in rows]


@storage_map("SubtensorModule", "WeightCommits")
def _hash_commits(conn, block, params):
    rows = conn.execute("SELECT * FROM weight_commits WHERE netuid = ? AND kind = 'hash' ORDER BY id", (int(params[0]) % GLOBAL_MAX_SUBNET_COUNT,))
    return [(r["hotkey"], ("0x" + codec.from_json(r["commit_data"]).hex(), r["block"], r["epoch"])) for r in rows]


def _u16(fraction: float) -> int:
    return int(round(min(max(fraction, 0.0), 1.0) * U16_MAX))


def _u16_row(pairs: list) -> list[tuple[int, int]]:
    return [(int(dest), _u16(value)) for dest, value in pairs]


def _axon(row: sqlite3.Row) -> dict:
    axon = codec.from_json(row["axon"]) if row["axon"] else None
    if axon is None:
        return {"block": 0, "version": 0, "ip": 0, "port": 0, "ip_type": 0, "protocol": 0, "placeholder1": 0, "placeholder2": 0}
    return axon


@runtime_api("SubnetInfoRuntimeApi", "get_metagraph")
def _metagraph(conn, block, params):
    netuid = int(params[0])
    try:
        hp, state = runtime.subnet(conn, netuid)
    except DispatchError:
        return None
    rows = runtime.neurons(conn, netuid)
    stakes = runtime.hotkey_stake(conn, netuid)
    scores = [codec.from_json(r["scores"]) for r in rows]

    def score(name: str) -> list[int]:
        return [_u16(s.get(name, 0.0)) for s in scores]

    stake = [stakes.get(r["hotkey"], 0) for r in rows]
    return {**_subnet_fields(netuid, block, hp, state, len(rows)), **_neuron_fields(rows, score, [int(s.get("emission", 0)) for s in scores], stake)}


def _subnet_fields(netuid: int, block: int, hp: dict, state: dict, num_uids: int) -> dict:
    """The subnet-wide half of ``get_metagraph``: identity, hyperparameters, epoch position."""
    return {
        "netuid": netuid,
        "name": list(state["name"].encode()),
        "symbol": list(state["symbol"].encode()),
        "identity": None,
        "network_registered_at": state["registered_at"],
        "owner_hotkey": state["owner_hotkey"],
        "owner_coldkey": state["owner_coldkey"],
        "block": block,
        "tempo": hp["tempo"],
        "last_step": state["last_epoch_block"],
        "blocks_since_last_step": block - state["last_epoch_block"],
        "subnet_emission": 0,
        "alpha_in": 0,
        "alpha_out": 0,
        "tao_in": 0,
        "alpha_in_emission": hp["emission_per_block"],
        "moving_price": {"bits": 0},
        "num_uids": num_uids,
        "max_uids": hp["max_uids"],
        "kappa": hp["kappa"],
        "min_allowed_weights": hp["min_allowed_weights"],
        "max_weights_limit": hp["max_weight_limit"],
        "weights_rate_limit": hp["weights_rate_limit"],
        "activity_cutoff": hp["activity_cutoff"],
        "max_validators": hp["max_allowed_validators"],
        "immunity_period": hp["immunity_period"],
        "commit_reveal_weights_enabled": hp["commit_reveal_weights_enabled"],
    }


def _neuron_fields(rows: list, score: Callable[[str], list[int]], emission: list[int], stake: list[int]) -> dict:
    """The per-uid half of ``get_metagraph``: one list per field, in uid order."""
    return {
        "hotkeys": [r["hotkey"] for r in rows],
        "coldkeys": [r["coldkey"] for r in rows],
        "identities": [None for _ in rows],
        "axons": [_axon(r) for r in rows],
        "active": [True for _ in rows],
        "validator_permit": [bool(r["validator_permit"]) for r in rows],
        "pruning_score": score("pruning_score"),
        "last_update": [int(r["last_update"]) for r in rows],
        "emission": emission,
        "dividends": score("dividends"),
        "incentives": score("incentive"),
        "consensus": score("consensus"),
        "trust": score("trust"),
        "rank": score("rank"),
        "block_at_registration": [int(r["registered_at"]) for r in rows],
        "alpha_stake": stake,
        "tao_stake": [0 for _ in rows],
        "total_stake": stake,
    }


def _neuron_record(conn: sqlite3.Connection, row: sqlite3.Row, lite: bool) -> dict:
    scores = codec.from_json(row["scores"])
    coldkey_stakes = conn.execute("SELECT coldkey, rao FROM stakes WHERE hotkey = ? AND netuid = ?", (row["hotkey"], row["netuid"])).fetchall()
    record = {
        "uid": int(row["uid"]),
        "hotkey": row["hotkey"],
        "coldkey": row["coldkey"],
        "netuid": int(row["netuid"]),
        "active": True,
        "validator_permit": bool(row["validator_permit"]),
        "last_update": int(row["last_update"]),
        "stake": [(r["coldkey"], int(r["rao"])) for r in coldkey_stakes],
        "axon_info": _axon(row),
        "prometheus_info": {"block": 0, "version": 0, "ip": 0, "port": 0, "ip_type": 0},
        "rank": _u16(scores.get("rank", 0.0)),
        "emission": int(scores.get("emission", 0)),
        "incentive": _u16(scores.get("incentive", 0.0)),
        "consensus": _u16(scores.get("consensus", 0.0)),
        "trust": _u16(scores.get("trust", 0.0)),
        "validator_trust": _u16(scores.get("validator_trust", 0.0)),
        "dividends": _u16(scores.get("dividends", 0.0)),
        "pruning_score": _u16(scores.get("pruning_score", 0.0)),
    }
    if not lite:
        record["weights"] = _u16_row(codec.from_json(row["weights"]))
        record["bonds"] = _u16_row(codec.from_json(row["bonds"]))
    return record


@runtime_api("NeuronInfoRuntimeApi", "get_neurons_lite")
def _neurons_lite(conn, block, params):
    return [_neuron_record(conn, r, lite=True) for r in runtime.neurons(conn, int(params[0]))]


@runtime_api("NeuronInfoRuntimeApi", "get_neurons")
def _neurons_full(conn, block, params):
    return [_neuron_record(conn, r, lite=False) for r in runtime.neurons(conn, int(params[0]))]


_HYPERPARAM_TYPES = {bool: "Bool"}


@runtime_api("SubnetInfoRuntimeApi", "get_subnet_hyperparams_v3")
def _hyperparams_v3(conn, block, params):
    hp = _hp(conn, int(params[0]))
    if hp is None:
        return None
    return [{"name": name, "value": {_HYPERPARAM_TYPES.get(type(value), "U64"): value}} for name, value in sorted(hp.items())]

"""``slmnet gateway`` and ``slmnet keys``: flags → GatewayConfig → gateway.service.run_gateway."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from neurons.common import CliError, add_chain_flags, chain_config, load_model_list, model_folder, model_pairs, run_service

DEFAULT_DB = "~/.slmnet/gateway.sqlite"


def add_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser(
        "gateway", help="the OpenAI-compatible API: keys, routing to the best miners, failover", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_chain_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--db", default=DEFAULT_DB, help="SQLite file: API keys and the usage ledger")
    p.add_argument(
        "--model-list", default=None, help="the subnet's model list (default: models/lists/NETWORK.json; it must match the hash the owner published)"
    )
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="ID=DIR",
        help="count tokens for model ID with the tokenizer in DIR (repeatable; default: every model of the list, built or prepared into the cache)",
    )
    p.add_argument(
        "--verify-share",
        type=float,
        default=0.05,
        help="share of chat answers put in the organic outbox (this gateway's --db) for a validator to verify: slmnet validator --organic-from DB",
    )
    p.add_argument("--explore", type=float, default=0.05, help="share of requests routed uniformly, so new miners earn a record")
    p.add_argument("--max-attempts", type=int, default=3, help="miners tried per request, failovers included")
    p.add_argument("--first-token-timeout", type=float, default=15.0, help="seconds to the first token before trying another miner")
    p.add_argument("--stall-timeout", type=float, default=10.0, help="seconds without a chunk mid-stream before continuing on another miner")
    p.add_argument("--sync-interval", type=float, default=12.0, help="seconds between metagraph reads")
    p.set_defaults(func=cmd_gateway, default_log_level=logging.INFO)

    keys = groups.add_parser("keys", help="the gateway's API keys").add_subparsers(dest="command", required=True)
    create = keys.add_parser("create", help="create a key (printed once; only its hash is stored)")
    create.add_argument("name")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute (default: unlimited)")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute, prompt + max_tokens (default: unlimited)")
    create.add_argument("--quota", type=int, default=None, help="tokens for the key's lifetime (default: unlimited)")
    listing = keys.add_parser("list", help="every key: name, prefix, limits, state")
    revoke = keys.add_parser("revoke", help="revoke a key by id, name or prefix")
    revoke.add_argument("key")
    usage = keys.add_parser("usage", help="a key's requests and tokens")
    usage.add_argument("key")
    for sub, func in ((create, cmd_keys_create), (listing, cmd_keys_list), (revoke, cmd_keys_revoke), (usage, cmd_keys_usage)):
        sub.add_argument("--db", default=DEFAULT_DB, help="the gateway's SQLite file")
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(func=func)


def _store(args: argparse.Namespace):
    from gateway.store import Store

    return Store(Path(args.db).expanduser())


def _key_or_fail(store, ref: str):
    key = store.find_key(ref)
    if key is None:
        raise CliError(f"no key {ref!r}: `slmnet keys list` shows them")
    return key


def _describe(key) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created)),
        "revoked": key.revoked is not None,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "quota_tokens": key.quota_tokens,
    }


def cmd_keys_create(args: argparse.Namespace) -> None:
    store = _store(args)
    secret, key = store.create_key(args.name, args.rpm, args.tpm, args.quota)
    print(json.dumps({"key": secret, **_describe(key)}) if args.json else f"{secret}\n(key {key.id} '{key.name}': shown once, only its hash is stored)")


def cmd_keys_list(args: argparse.Namespace) -> None:
    rows = [_describe(k) for k in _store(args).keys()]
    if args.json:
        print(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "prefix", "created", "rpm", "tpm", "quota", "state")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["name"],
            r["prefix"] + "…",
            r["created"],
            str(r["rpm"] or "-"),
            str(r["tpm"] or "-"),
            str(r["quota_tokens"] or "-"),
            "revoked" if r["revoked"] else "active",
        )
    Console().print(table)


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    store = _store(args)
    key = _key_or_fail(store, args.key)
    store.revoke(key.id)
    print(json.dumps({"revoked": key.id}) if args.json else f"revoked key {key.id} '{key.name}'")


def cmd_keys_usage(args: argparse.Namespace) -> None:
    store = _store(args)
    key = _key_or_fail(store, args.key)
    usage = store.usage(key.id)
    print(
        json.dumps({**_describe(key), **usage})
        if args.json
        else f"key {key.id} '{key.name}': {usage['requests']} requests, {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens, "
        f"{usage['failovers']} failovers" + (f", quota {key.quota_tokens}" if key.quota_tokens else "")
    )


def build_config(args: argparse.Namespace):
    from gateway.state import GatewaySettings
    from gateway.service import GatewayConfig
    from models.prepare import default_cache_dir

    models = load_model_list(args.model_list, args.network)
    tokenizers = dict(model_pairs("--tokenizer", args.tokenizer, models))
    for model_id, folder in tokenizers.items():
        if not (Path(folder).expanduser() / "tokenizer_config.json").is_file():
            raise CliError(f"--tokenizer {model_id}={folder}: no tokenizer there (a model folder with tokenizer_config.json)")
    if not tokenizers:
        tokenizers = {m.id: model_folder(m.source, default_cache_dir()) for m in models.models}
    if not 0 <= args.verify_share <= 1:
        raise CliError("--verify-share is a share: 0 to 1")
    settings = GatewaySettings(
        max_attempts=args.max_attempts, first_token_timeout=args.first_token_timeout, stall_timeout=args.stall_timeout, verify_share=args.verify_share
    )
    return GatewayConfig(
        chain=chain_config(args),
        host=args.host,
        port=args.port,
        db=Path(args.db).expanduser(),
        models=models,
        tokenizers=tokenizers,
        settings=settings,
        explore=args.explore,
        sync_interval=args.sync_interval,
    )


def cmd_gateway(args: argparse.Namespace) -> None:
    import chain
    from gateway.service import GatewayStartupError, run_gateway

    run_service(run_gateway(build_config(args)), GatewayStartupError, chain.ChainLayerError)

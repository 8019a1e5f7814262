"""``slmnet gateway`` and ``slmnet keys``: flags → GatewayConfig → gateway.service.run_gateway."""

from __future__ import annotations

import argparse
import calendar
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

from gateway.settings import GatewaySettings
from neurons.common import CliError, HelpFormatter, add_chain_flags, chain_config, load_model_list, model_folder, model_pairs, run_service

DEFAULT_DB = "~/.slmnet/gateway.sqlite"


def add_parser(groups: argparse._SubParsersAction) -> None:
    p = groups.add_parser("gateway", help="the OpenAI-compatible API: keys, routing to the best miners, failover", formatter_class=HelpFormatter)
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
        default=GatewaySettings.verify_share,
        help="base share of chat answers put in the organic outbox for a validator to verify (more for new and suspect miners): slmnet validator --organic-from URL",
    )
    p.add_argument(
        "--validator-hotkey",
        action="append",
        default=[],
        metavar="SS58",
        help="a validator that may read the organic outbox and service counts and post verdicts over HTTP (/v1/organic/*; repeatable; default: reads by this gateway's own hotkey and every hotkey with a validator permit on the subnet, verdicts by its own only)",
    )
    p.add_argument(
        "--external-ip",
        default=None,
        help="announce this gateway on chain at this address (its hotkey serves the endpoint and commits the gateway role): every validator with a permit then reads it",
    )
    p.add_argument("--external-port", type=int, default=None, help="port announced with --external-ip (default: --port)")
    p.add_argument(
        "--replay-prompts",
        action="store_true",
        help="let a validator replay the sampled users' prompts to miners as challenges (which miners then cannot tell from users); off: only their sampling choices are copied",
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=GatewaySettings.default_max_tokens,
        help="the answer's budget when a request names none (max_tokens and max_completion_tokens absent); reserved against the key's limits",
    )
    p.add_argument("--explore", type=float, default=GatewaySettings.explore, help="share of requests routed uniformly, so new miners earn a record")
    p.add_argument("--max-attempts", type=int, default=GatewaySettings.max_attempts, help="miners tried per request, failovers included")
    p.add_argument(
        "--first-token-timeout", type=float, default=GatewaySettings.first_token_timeout, help="seconds to the first token before trying another miner"
    )
    p.add_argument(
        "--stall-timeout", type=float, default=GatewaySettings.stall_timeout, help="seconds without a chunk mid-stream before continuing on another miner"
    )
    p.add_argument(
        "--metagraph-interval",
        "--sync-interval",
        dest="metagraph_interval",
        type=float,
        default=GatewaySettings.metagraph_interval,
        help="seconds between metagraph reads (--sync-interval: the old name)",
    )
    p.add_argument(
        "--metrics-token",
        default=None,
        help="who may scrape /metrics: whoever sends Authorization: Bearer TOKEN (default $SLMNET_METRICS_TOKEN; unset: this host only)",
    )
    p.add_argument("--workers", type=int, default=1, help="gateway processes sharing the port (SO_REUSEPORT); above 1 needs --redis")
    p.add_argument("--redis", default=None, metavar="URL", help="redis://host:port/db: per-key windows and quotas shared by every worker and host")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", help="a browser origin allowed to call the API (repeatable; * for any)")
    p.add_argument(
        "--keepalive", type=float, default=GatewaySettings.keepalive_s, help="seconds between SSE comments while a stream waits for its first token (0: none)"
    )
    p.add_argument(
        "--ledger-days",
        type=float,
        default=GatewaySettings.ledger_days,
        help="days a finished request's row stays in the ledger (never less than a quota period in force; each key's totals are kept for good)",
    )
    p.add_argument("--samples-days", type=float, default=GatewaySettings.samples_days, help="days an organic sample waits for a validator to read it")
    p.add_argument(
        "--verdict-ttl",
        type=float,
        default=GatewaySettings.verdict_ttl_s,
        help="seconds a validator's verdict on a miner counts after it was posted: a validator that stops posting stops holding miners out",
    )
    p.set_defaults(func=cmd_gateway, default_log_level=logging.INFO)

    keys = groups.add_parser("keys", help="the gateway's API keys").add_subparsers(dest="command", required=True)
    create = keys.add_parser("create", help="create a key (printed once; only its hash is stored)")
    create.add_argument("name")
    update = keys.add_parser("update", help="change a key's limits, quota or expiry (0 or 'none' lifts a limit)")
    update.add_argument("key", help="id, name or prefix")
    for sub, default in ((create, None), (update, KEEP)):
        sub.add_argument("--rpm", type=_limit, default=default, help="requests per minute (default: unlimited)")
        sub.add_argument("--tpm", type=_limit, default=default, help="tokens per minute, prompt + max_tokens (default: unlimited)")
        sub.add_argument("--quota", type=_limit, default=default, help="tokens per quota period (default: unlimited)")
        sub.add_argument("--quota-period", type=_period, default=default, help="day | week | month (30 days) | SECONDS | lifetime (the default)")
        sub.add_argument("--expires", type=_expiry, default=default, help="YYYY-MM-DD (UTC), +DAYSd, or never (the default)")
        sub.add_argument("--price", type=_price, default=default, help="what the key is charged per million tokens, shown as usage.cost (default: none)")
    listing = keys.add_parser("list", help="every key: name, prefix, limits, state")
    revoke = keys.add_parser("revoke", help="revoke a key by id, name or prefix")
    revoke.add_argument("key")
    usage = keys.add_parser("usage", help="a key's requests and tokens")
    usage.add_argument("key")
    for sub, func in ((create, cmd_keys_create), (update, cmd_keys_update), (listing, cmd_keys_list), (revoke, cmd_keys_revoke), (usage, cmd_keys_usage)):
        sub.add_argument("--db", default=DEFAULT_DB, help="the gateway's SQLite file")
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(func=func)


KEEP = object()  # `keys update`: the flag was not given, the setting stays
PERIODS = {"day": 86400, "week": 7 * 86400, "month": 30 * 86400}


def _limit(text: str) -> Optional[int]:
    if text.lower() in ("0", "none", "unlimited"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a limit is a positive number, or 0/none for unlimited")
    return value


def _price(text: str) -> Optional[float]:
    if text.lower() in ("none", "0"):
        return None
    value = float(text)
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError("a price is a positive amount per million tokens, or none")
    return value


def _period(text: str) -> Optional[int]:
    if text.lower() in ("lifetime", "none", "0"):
        return None
    seconds = PERIODS.get(text.lower()) or int(text)
    if seconds < 60:
        raise argparse.ArgumentTypeError("a quota period is day, week, month or at least 60 seconds")
    return seconds


def _expiry(text: str) -> Optional[float]:
    if text.lower() in ("never", "none"):
        return None
    if text.startswith("+") and text.endswith("d"):
        return time.time() + float(text[1:-1]) * 86400
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%d"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError("an expiry is YYYY-MM-DD (UTC), +DAYSd or never") from exc


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
        "quota_period_s": key.quota_period,
        "expires": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(key.expires)) if key.expires else None,
        "price_per_million_tokens": key.price,
    }


def cmd_keys_create(args: argparse.Namespace) -> None:
    store = _store(args)
    secret, key = store.create_key(args.name, args.rpm, args.tpm, args.quota, quota_period=args.quota_period, expires=args.expires, price=args.price)
    print(json.dumps({"key": secret, **_describe(key)}) if args.json else f"{secret}\n(key {key.id} '{key.name}': shown once, only its hash is stored)")


def cmd_keys_update(args: argparse.Namespace) -> None:
    store = _store(args)
    key = _key_or_fail(store, args.key)
    names = {"rpm": "rpm", "tpm": "tpm", "quota": "quota_tokens", "quota_period": "quota_period", "expires": "expires", "price": "price"}
    changes = {column: getattr(args, flag) for flag, column in names.items() if getattr(args, flag) is not KEEP}
    if not changes:
        raise CliError("nothing to change: give --rpm, --tpm, --quota, --quota-period, --expires or --price")
    key = store.update_key(key.id, **changes)
    print(json.dumps(_describe(key)) if args.json else f"key {key.id} '{key.name}' updated: {', '.join(f'{k}={v}' for k, v in changes.items())}")


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
    if min(args.ledger_days, args.samples_days, args.verdict_ttl) <= 0:
        raise CliError("--ledger-days, --samples-days and --verdict-ttl must be above 0")
    settings = GatewaySettings(
        max_attempts=args.max_attempts,
        first_token_timeout=args.first_token_timeout,
        stall_timeout=args.stall_timeout,
        verify_share=args.verify_share,
        replay_prompts=args.replay_prompts,
        validator_hotkeys=tuple(args.validator_hotkey),
        redis_url=args.redis,
        cors_origins=tuple(args.cors_origin),
        keepalive_s=args.keepalive,
        explore=args.explore,
        default_max_tokens=args.default_max_tokens,
        metrics_token=args.metrics_token or os.environ.get("SLMNET_METRICS_TOKEN"),  # the environment keeps it out of `ps`
        metagraph_interval=args.metagraph_interval,
        ledger_days=args.ledger_days,
        samples_days=args.samples_days,
        verdict_ttl_s=args.verdict_ttl,
    )
    if args.redis and not args.redis.startswith(("redis://", "rediss://", "unix://")):
        raise CliError(f"--redis {args.redis!r}: expected redis://host:port/db, rediss://… or unix://path")
    try:
        return _config(args, models, tokenizers, settings)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _config(args: argparse.Namespace, models, tokenizers: dict[str, str], settings):
    from gateway.service import GatewayConfig

    return GatewayConfig(
        chain=chain_config(args),
        host=args.host,
        port=args.port,
        db=Path(args.db).expanduser(),
        models=models,
        tokenizers=tokenizers,
        settings=settings,
        workers=args.workers,
        recover_ledger=args.workers == 1,
        announce=(args.external_ip, args.external_port or args.port) if args.external_ip else None,
    )


def cmd_gateway(args: argparse.Namespace) -> None:
    import chain
    from gateway.service import run_gateway
    from shell.role import StartupError

    config = build_config(args)
    if config.workers > 1:
        from gateway.workers import WorkersFailed, run_workers

        try:
            run_workers(config)
        except WorkersFailed as exc:
            raise CliError(str(exc)) from exc
        return
    run_service(run_gateway(config), StartupError, chain.ChainLayerError)

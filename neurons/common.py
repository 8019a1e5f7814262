"""What every ``slmnet`` command shares: the one-line error and the chain and wallet flags."""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Coroutine, Optional


class CliError(Exception):
    """A failure to report to the user as one line."""


def emit(args: argparse.Namespace, payload: Any, human: Callable[[], None]) -> None:
    """``payload`` as JSON with ``--json``, else what ``human`` prints."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        human()


LOG_LEVELS = ("debug", "info", "warning", "error")


def add_chain_flags(parser: argparse.ArgumentParser) -> None:
    """The chain and wallet flags every role shares, and its logging flags."""
    logs = parser.add_argument_group("logging")
    logs.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="log level (default: info for the roles, warning otherwise)")
    logs.add_argument("--log-file", default=None, help="also append the log to this file")
    group = parser.add_argument_group("chain and wallet")
    group.add_argument("--network", default="finney", help="finney | test | local | ws://host:port | localnet:DIR")
    group.add_argument("--netuid", type=int, required=True, help="the subnet")
    group.add_argument("--wallet-path", default="~/.bittensor/wallets", help="wallets folder")
    group.add_argument("--wallet-name", default="default", help="wallet (coldkey) name")
    group.add_argument("--wallet-hotkey", default="default", help="hotkey name")


def chain_config(args: argparse.Namespace):
    """The chain and wallet every role's config holds, from the flags ``add_chain_flags`` added."""
    from chain import ChainConfig

    try:
        return ChainConfig(args.network, args.netuid, str(Path(args.wallet_path).expanduser()), args.wallet_name, args.wallet_hotkey)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def http_status(url: str, timeout: float = 2.0) -> Optional[int]:
    """The HTTP status of a GET (error statuses included), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def run_service(service: Coroutine[Any, Any, None], *expected: type[BaseException]) -> None:
    """Run a long-lived service on uvloop (less CPU per relayed chunk, which matters where the
    engine's own API server shares the cores); ``expected`` errors become one-line CLI errors."""
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(service)
    except expected as exc:
        raise CliError(str(exc)) from exc


def model_pairs(flag: str, items: list[str], models) -> list[tuple[str, str]]:
    """``ID=VALUE`` flag values, each ID from the model list."""
    pairs = []
    for item in items:
        model_id, sep, value = item.partition("=")
        if not sep or not value or models.get(model_id) is None:
            raise CliError(f"{flag} {item!r}: expected ID=VALUE with an ID from the model list ({', '.join(m.id for m in models.models)})")
        pairs.append((model_id, value))
    return pairs


def load_model_list(path: str | None, network: str):
    """``--model-list`` when given, else the repo's list for the network."""
    from models import subnet as model_list

    try:
        return model_list.load(Path(path).expanduser() if path else model_list.for_network(network))
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def model_folder(source: str, cache: Path) -> str:
    """``models.prepare.model_folder``, its PrepareError as a CliError."""
    from models.prepare import PrepareError
    from models.prepare import model_folder as folder_of

    try:
        return folder_of(source, cache)
    except PrepareError as exc:
        raise CliError(str(exc)) from exc


def given(**flags: Any) -> dict[str, Any]:
    """The flags the operator gave (not None): the rest take their defaults from the config class they fill, defined there once."""
    return {name: value for name, value in flags.items() if value is not None}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it has one here; a flag left None takes its config class's default, which its help names."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return (action.help if action.default is None else super()._get_help_string(action)) or ""

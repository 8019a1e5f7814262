"""What every ``slmnet`` command shares: the one-line error and the chain and wallet flags."""

from __future__ import annotations

import argparse


class CliError(Exception):
    """A failure to report to the user as one line."""


def add_chain_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("chain and wallet")
    group.add_argument("--network", default="finney", help="finney | test | local | ws://host:port | localnet:DIR")
    group.add_argument("--netuid", type=int, required=True, help="the subnet")
    group.add_argument("--wallet-path", default="~/.bittensor/wallets", help="wallets folder")
    group.add_argument("--wallet-name", default="default", help="wallet (coldkey) name")
    group.add_argument("--wallet-hotkey", default="default", help="hotkey name")

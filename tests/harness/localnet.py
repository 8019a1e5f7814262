"""Test helpers: a fresh localnet folder and funded development wallets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import bittensor as bt

import chain
from chain.localnet import admin

FAST = {"tempo": 10, "block_time": 0.1}


@dataclass
class Localnet:
    dir: Path
    wallets_dir: Path
    netuid: int = 1

    @property
    def network(self) -> str:
        return f"localnet:{self.dir}"

    def wallet(self, name: str, fund_tao: float = 10_000) -> bt.Wallet:
        """A new password-less wallet whose coldkey holds ``fund_tao``."""
        wallet = bt.wallets.create(name, "default", path=str(self.wallets_dir), use_password=False, on_mnemonic=lambda *_: None)
        if fund_tao:
            admin.fund(self.dir, wallet.coldkeypub.ss58_address, fund_tao)
        return wallet

    def register(self, names) -> tuple[dict[str, bt.Wallet], dict[str, int]]:
        """New funded wallets for ``names``, registered on the subnet: (wallets, uids) by name."""
        wallets = {name: self.wallet(name) for name in names}

        async def register() -> dict[str, int]:
            async with chain.connect(self.network) as c:
                for wallet in wallets.values():
                    (await c.register(wallet, self.netuid)).raise_for_failure()
                return {name: await c.uid_of(self.netuid, w.hotkey.ss58_address) for name, w in wallets.items()}

        return wallets, asyncio.run(register())

    def flags(self, wallet_name: str) -> list[str]:
        """The chain and wallet flags every `slmnet` command takes, for one of our wallets."""
        return ["--network", self.network, "--netuid", str(self.netuid), "--wallet-path", str(self.wallets_dir), "--wallet-name", wallet_name]

    def stake(self, wallet: bt.Wallet, tao: float) -> None:
        admin.fund(self.dir, wallet.coldkeypub.ss58_address, tao)
        admin.stake(self.dir, wallet.coldkeypub.ss58_address, wallet.hotkey.ss58_address, tao)


def make_localnet(tmp_path: Path, **overrides) -> Localnet:
    params = {**FAST, **overrides}
    admin.init(tmp_path / "chain", **params)
    return Localnet(dir=tmp_path / "chain", wallets_dir=tmp_path / "wallets")

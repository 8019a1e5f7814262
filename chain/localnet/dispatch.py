"""Which pallet function applies each extrinsic the localnet implements: one table, written out.

The pallets import the shared state helpers from ``runtime``; this module imports the
pallets, so nothing imports in a circle and every call the localnet accepts is listed here.
"""

from __future__ import annotations

from typing import Callable

from . import balances, commitments, registry, weights
from .runtime import Context, DispatchError

Handler = Callable[[Context, str, dict], None]
HANDLERS: dict[tuple[str, str], Handler] = {
    ("Balances", "transfer_keep_alive"): balances.transfer,
    ("Balances", "transfer_allow_death"): balances.transfer,
    ("Commitments", "set_commitment"): commitments.set_commitment,
    ("SubtensorModule", "burned_register"): registry.burned_register,
    ("SubtensorModule", "serve_axon"): registry.serve_axon,
    ("SubtensorModule", "set_mechanism_weights"): weights.set_weights,
    ("SubtensorModule", "set_weights"): weights.set_weights,
    ("SubtensorModule", "commit_mechanism_weights"): weights.commit_weights,
    ("SubtensorModule", "commit_weights"): weights.commit_weights,
    ("SubtensorModule", "commit_timelocked_mechanism_weights"): weights.commit_timelocked,
    ("SubtensorModule", "commit_timelocked_weights"): weights.commit_timelocked,
    ("SubtensorModule", "commit_crv3_mechanism_weights"): weights.commit_timelocked,
    ("SubtensorModule", "reveal_mechanism_weights"): weights.reveal_weights,
    ("SubtensorModule", "reveal_weights"): weights.reveal_weights,
}


def dispatch(ctx: Context, signer: str, module: str, function: str, params: dict) -> None:
    """Apply one extrinsic inside the open transaction; DispatchError with the chain's error name when it fails."""
    handler = HANDLERS.get((module, function))
    if handler is None:
        raise DispatchError("CallFiltered", f"The localnet does not implement {module}.{function}.")
    handler(ctx, signer, params)

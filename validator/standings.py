"""What a scored round does to the miners' standings: model rewards, the fold.

Pure functions over a ``RoundReport``: the live loop (``validator.service``), the replay
(``validator.replay``) and the network simulation (``bench/network_sim.py``) all go through
them, so the three cannot disagree on what a round is worth.
"""

from __future__ import annotations

import logging
from typing import Mapping

from models.subnet import ModelList
from scoring.aggregate import AggregationParams, Standing, update
from validator.records import RoundReport, Target

log = logging.getLogger(__name__)

Standings = dict[str, tuple[int, Standing]]  # hotkey → (its uid, its standing)


def apply_rewards(report: RoundReport, targets: list[Target], models: ModelList) -> None:
    """Each score times its model's reward in the model list; each delivered capacity in streams of
    its model at the list's reference speed (``stream_tokens_per_s``): what the weights pay for."""
    declared = {t.uid: supported for t in targets if (supported := models.get(t.model)) is not None}  # targets serve listed models
    report.scores = {uid: score * declared[uid].reward for uid, score in report.scores.items()}
    report.capacity = {uid: tokens_per_s / declared[uid].stream_tokens_per_s for uid, tokens_per_s in report.delivered.items()}


def fold(previous: Standings, hotkeys: Mapping[int, str], report: RoundReport, round_index: int, params: AggregationParams) -> Standings:
    """New standings: this round's scores folded in; hotkeys no longer on the subnet (``hotkeys``:
    uid → hotkey now) dropped. A buffering or flagged miner's standing starts again from zero."""
    present = set(hotkeys.values())
    standings = {hotkey: value for hotkey, value in previous.items() if hotkey in present}
    for uid, score in report.scores.items():
        hotkey = hotkeys[uid]
        _, standing = standings.get(hotkey, (uid, Standing()))
        reset = uid in report.buffered or uid in report.flagged
        standings[hotkey] = (uid, update(standing, score, uid in report.fidelity_failed, round_index, params, reset, report.capacity.get(uid)))
    return standings


def effective_scores(standings: Standings, params: AggregationParams, round_index: int) -> dict[int, float]:
    """uid → the score weights are set from, as of ``round_index``."""
    return {uid: s.effective(params, round_index) for uid, s in standings.values()}


def capacities(standings: Standings) -> dict[int, float]:
    """uid → the streams it serves at its model's reference speed (its capacity EMA): what weights pay for."""
    return {uid: s.capacity for uid, s in standings.values()}

"""Yuma consensus: what validators and miners see of an epoch."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from chain.localnet import yuma


def run(stake, weights, permit=None, bonds=None):
    n = len(stake)
    return yuma.epoch(
        yuma.EpochInput(
            stake=np.array(stake, dtype=float),
            validator_permit=np.array(permit if permit is not None else [s > 0 for s in stake]),
            weights=np.array(weights, dtype=float),
            bonds=np.zeros((n, n)) if bonds is None else bonds,
            active=np.ones(n, dtype=bool),
        )
    )


# uids 0, 1 validators (stake 70 / 30); uids 2, 3 miners
MAJORITY_MINORITY = [
    [0, 0, 1.0, 0.0],  # the majority validator pays miner 2 only
    [0, 0, 0.0, 1.0],  # the minority validator pays miner 3 only
    [0, 0, 0, 0],
    [0, 0, 0, 0],
]


def test_minority_validator_cannot_lift_a_miner_the_majority_ignores():
    out = run([70, 30, 0, 0], MAJORITY_MINORITY)
    assert out.incentive[2] == 1.0
    assert out.incentive[3] == 0.0
    assert out.consensus[3] == 0.0  # the outlier weight is clipped to consensus


def test_majority_flip_moves_incentive():
    out = run([30, 70, 0, 0], MAJORITY_MINORITY)
    assert out.incentive[3] == 1.0 and out.incentive[2] == 0.0


def test_agreeing_validators_split_by_weights_and_keep_full_trust():
    weights = [[0, 0, 3, 1], [0, 0, 3, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    out = run([50, 50, 0, 0], weights)
    np.testing.assert_allclose(out.incentive[2:], [0.75, 0.25])
    np.testing.assert_allclose(out.trust[2:], [1.0, 1.0])


def test_dividends_go_to_validators_that_agree_with_consensus():
    out = run([70, 30, 0, 0], MAJORITY_MINORITY)
    assert out.dividends[0] == 1.0 and out.dividends[1] == 0.0


def test_bonds_are_an_ema_across_epochs():
    first = run([50, 50, 0, 0], [[0, 0, 1, 0], [0, 0, 1, 0], [0] * 4, [0] * 4])
    # validator 0 stops agreeing; its old bond on miner 2 decays but does not vanish
    second = run([50, 50, 0, 0], [[0, 0, 0, 1], [0, 0, 1, 0], [0] * 4, [0] * 4], bonds=first.bonds)
    assert 0 < second.bonds[0, 2] < first.bonds[0, 2]


def test_validators_without_permit_have_no_say():
    out = run([70, 30, 0, 0], MAJORITY_MINORITY, permit=[False, True, False, False])
    assert out.incentive[3] == 1.0


def test_emission_split_gives_owner_the_rest():
    miner, validator, owner = yuma.emission_split(1000, np.array([0.5, 0.5, 0, 0]), np.array([0, 0, 1.0, 0]))
    assert miner.tolist() == [205, 205, 0, 0]
    assert validator.tolist() == [0, 0, 410, 0]
    assert owner == 180


@settings(max_examples=200)
@given(
    stake=arrays(np.float64, 5, elements=st.floats(0, 1e6)),
    weights=arrays(np.float64, (5, 5), elements=st.floats(0, 65535)),
)
def test_scores_are_fractions_and_incentive_is_normalized(stake, weights):
    out = run(stake.tolist(), weights.tolist())
    for vector in (out.incentive, out.dividends, out.consensus, out.trust, out.rank):
        assert np.all(vector >= -1e-12) and np.all(vector <= 1 + 1e-9)
    for vector in (out.incentive, out.dividends):
        assert abs(vector.sum() - 1) < 1e-9 or vector.sum() == 0


@settings(max_examples=200)
@given(
    minority=st.floats(0.01, 0.49),
    minority_weights=arrays(np.float64, 3, elements=st.floats(0, 1)),
)
def test_no_minority_can_lift_a_miner_the_majority_zeroes(minority, minority_weights):
    weights = np.zeros((5, 5))
    weights[0, 2:] = [1.0, 1.0, 0.0]  # the majority zeroes miner 4
    weights[1, 2:] = minority_weights
    out = run([1 - minority, minority, 0, 0, 0], weights.tolist())
    assert out.incentive[4] == 0.0

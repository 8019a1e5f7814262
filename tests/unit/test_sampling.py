"""The verifiable sampler: the same bits on numpy and torch, and exactly Gumbel-max over what the filters keep."""

from __future__ import annotations

import numpy as np
import torch

from engine.sampling import Seeded, choose
from protocol.sampling import GUMBEL_MAX, GUMBEL_MIN, gumbel, gumbel_of_hash, token_hashes

VOCAB = 49152  # SmolLM2's


def test_numpy_torch_and_python_compute_the_same_variates():
    ids = np.arange(VOCAB, dtype=np.int64)
    for seed, position in ((0, 0), (2**63 + 5, 7), (123456789, 4095)):
        on_numpy = gumbel_of_hash(token_hashes(seed, position, ids), np.log)
        on_torch = gumbel_of_hash(token_hashes(seed, position, torch.from_numpy(ids)), torch.log).numpy()
        assert np.array_equal(token_hashes(seed, position, ids), token_hashes(seed, position, torch.from_numpy(ids)).numpy())
        assert np.max(np.abs(on_numpy - on_torch)) < 1e-12
        assert on_numpy[17] == gumbel(seed, position, 17)
        assert GUMBEL_MIN <= on_numpy.min() and on_numpy.max() <= GUMBEL_MAX


def test_the_variates_look_like_gumbel_and_differ_by_position_and_seed():
    ids = np.arange(VOCAB, dtype=np.int64)
    g = gumbel_of_hash(token_hashes(42, 3, ids), np.log)
    assert abs(g.mean() - 0.5772) < 0.03 and abs(g.var() - np.pi**2 / 6) < 0.1  # 49k draws: ± 0.006 and ± 0.02 (1 sd)
    assert np.corrcoef(g, gumbel_of_hash(token_hashes(42, 4, ids), np.log))[0, 1] < 0.03
    assert np.corrcoef(g, gumbel_of_hash(token_hashes(43, 3, ids), np.log))[0, 1] < 0.03


def _brute_force(logits: torch.Tensor, request: Seeded) -> int:
    scaled = logits.double() / request.temperature
    probs = torch.softmax(scaled, -1)
    order = torch.argsort(probs, descending=True)
    before = torch.cumsum(probs[order], -1) - probs[order]
    keep = torch.zeros(VOCAB, dtype=torch.bool)
    keep[order] = before < request.top_p
    noise = gumbel_of_hash(token_hashes(request.seed, len(request.output_ids), torch.arange(VOCAB)), torch.log)
    return int(torch.argmax(torch.where(keep, scaled + noise, torch.tensor(float("-inf"), dtype=torch.float64))))


def test_the_sampler_takes_the_gumbel_max_winner_of_the_kept_tokens():
    rng = np.random.default_rng(0)
    ids = torch.arange(VOCAB, dtype=torch.int64)
    for _ in range(60):
        logits = torch.tensor(rng.normal(0, rng.choice([0.5, 3.0, 8.0]), VOCAB), dtype=torch.float32)
        request = Seeded(
            int(rng.integers(1 << 62)), float(rng.choice([0.3, 0.7, 1.0, 1.5])), float(rng.choice([1.0, 0.95, 0.5])), 0, 0.0, [0] * int(rng.integers(100))
        )
        assert choose(logits, request, ids) == _brute_force(logits, request)


def test_its_choices_follow_the_tempered_distribution():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2] + [1e-9] * 5))
    ids = torch.arange(8)
    picks = np.bincount([choose(logits, Seeded(seed, 1.0, 1.0, 0, 0.0, []), ids) for seed in range(4000)], minlength=8)
    assert np.all(np.abs(picks[:3] / 4000 - [0.5, 0.3, 0.2]) < 0.04)  # 5 sd at n = 4000
    assert picks[3:].sum() == 0

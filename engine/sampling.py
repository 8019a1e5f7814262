"""The vLLM logits processor that makes a miner's sampling checkable (``protocol.sampling``).

Loaded into every engine slmnet starts (``--logits-processors engine.sampling:VerifiableSampler``).
For each request with a ``seed`` and a temperature above 0 it makes the choice itself:
Gumbel-max over ``logits / T`` with the public per-(seed, position, token) variates,
among the tokens ``top_k``, ``top_p`` and ``min_p`` keep; then every other logit is set to
−inf, so vLLM's own sampler (temperature, filters, its random draw) can only return that
token. Greedy and unseeded requests pass through untouched. The logprobs vLLM reports are
computed before any processor runs, so they stay the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from protocol.sampling import GUMBEL_MAX, GUMBEL_MIN, gumbel_of_hash, token_hashes

GREEDY_BELOW = 1e-5  # vLLM treats a temperature below this as greedy
NUCLEUS_SCAN = 1024


@dataclass(frozen=True)
class Seeded:
    seed: int
    temperature: float
    top_p: float
    top_k: int  # 0: off
    min_p: float
    output_ids: list[int]  # vLLM's live list of the request's generated tokens: its length is the position


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The ids top_p keeps: each token whose higher-ranked tokens hold less than top_p. The
    nucleus nearly always lies in the top 1024 (a partial sort); the full sort is the fallback."""
    k = min(probs.numel(), NUCLEUS_SCAN)
    ordered, order = torch.topk(probs, k)
    if k < probs.numel() and float(ordered.sum()) < top_p:
        ordered, order = torch.sort(probs, descending=True)
    before = torch.cumsum(ordered, dim=-1) - ordered
    return order[before < top_p]


def choose(logits: torch.Tensor, request: Seeded, token_ids: torch.Tensor) -> int:
    """The token the verifiable sampler picks from one row of logits (any dtype, any device):
    argmax of ``logits / T + gumbel`` over the tokens the filters keep.

    Only candidates that can win get a Gumbel variate: a token more than the variates' whole
    range (GUMBEL_MAX − GUMBEL_MIN) below the top token's scaled logit loses to it whatever
    both variates are, and the top token is kept by every filter.
    """
    scaled = logits.double() / request.temperature
    top = scaled.max()
    candidates = scaled >= top - (GUMBEL_MAX - GUMBEL_MIN)
    if request.top_k > 0 and request.top_k < scaled.numel():
        candidates &= scaled >= torch.topk(scaled, request.top_k).values[-1]
    if request.top_p < 1.0 or request.min_p > 0.0:
        probs = torch.softmax(scaled, dim=-1)
        if request.min_p > 0.0:
            candidates &= probs >= request.min_p * probs.max()
        if request.top_p < 1.0:
            nucleus = torch.zeros_like(candidates)
            nucleus[_nucleus(probs, request.top_p)] = True
            candidates &= nucleus
    ids = token_ids[candidates]
    noise = gumbel_of_hash(token_hashes(request.seed, len(request.output_ids), ids), torch.log)
    return int(ids[torch.argmax(scaled[candidates] + noise)])


class VerifiableSampler(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.device = device
        self.requests: dict[int, Seeded] = {}
        self.token_ids: Optional[torch.Tensor] = None

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams):
        return None

    def is_argmax_invariant(self) -> bool:
        # False puts it with the processors that see the raw logits, before vLLM applies the
        # temperature (greedy rows are left as they are all the same).
        return False

    @staticmethod
    def _seeded(params: SamplingParams, _prompt: Optional[list[int]], output_ids: list[int]) -> Optional[Seeded]:
        if params.seed is None or params.temperature < GREEDY_BELOW:
            return None
        return Seeded(params.seed, params.temperature, params.top_p, params.top_k if params.top_k and params.top_k > 0 else 0, params.min_p or 0.0, output_ids)

    def update_state(self, batch_update: Optional[BatchUpdate]) -> None:
        process_dict_updates(self.requests, batch_update, self._seeded)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.requests:
            return logits
        if self.token_ids is None or self.token_ids.numel() != logits.shape[-1]:
            self.token_ids = torch.arange(logits.shape[-1], dtype=torch.int64, device=logits.device)
        for row, request in self.requests.items():
            if row >= logits.shape[0]:
                continue
            chosen = choose(logits[row], request, self.token_ids)
            value = logits[row, chosen].clone()
            logits[row].fill_(float("-inf"))
            logits[row, chosen] = value
        return logits

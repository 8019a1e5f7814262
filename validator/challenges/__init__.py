"""Challenges for a validation round: checkable tasks, open prompts and conversations, with
sampling parameters, all drawn from one round seed.

``round_seed`` mixes a block hash (unknown to miners before the block) with the
validator's hotkey and the round number; ``generate`` turns a seed into challenges
deterministically, so anyone holding the seed can rebuild the round and re-check it.
A challenge body has exactly the fields an organic request through the gateway has
(the gateway asks for logprobs and token ids too), so a miner cannot tell them apart.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Optional

from validator.challenges.tasks import FAMILIES, Answer, Task, grade

__all__ = ["Challenge", "generate", "grade", "round_seed", "FAMILY_WEIGHTS"]

# Share of each family in a round (keyed by family name): mostly checkable tasks, 30% open prompts.
FAMILY_WEIGHTS = {
    "arithmetic": 0.12,
    "reverse_string": 0.1,
    "sort_numbers": 0.1,
    "count_letter": 0.08,
    "json_format": 0.1,
    "uppercase": 0.08,
    "multi_turn": 0.12,
    "open_prompt": 0.3,
}
TEMPERATURES = (0.0, 0.0, 0.3, 0.6, 0.7, 1.0)
TOP_PS = (1.0, 1.0, 0.95, 0.9)


@dataclass(frozen=True)
class Challenge:
    family: str
    seed: int  # the challenge's own seed (derived from the round seed and its index)
    body: dict[str, Any]  # the request body, without "model" (added per miner)
    answer: Optional[Answer]

    def request(self, model: str) -> dict[str, Any]:
        return {"model": model, **self.body}


def round_seed(block_hash: str, validator_hotkey: str, round_index: int) -> int:
    digest = hashlib.sha256(f"{block_hash}|{validator_hotkey}|{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _body(task: Task, rng: random.Random, max_context: int) -> dict[str, Any]:
    checkable = task.answer is not None
    body: dict[str, Any] = {
        "messages": [dict(m) for m in task.messages],
        "max_tokens": rng.randint(16, 64) if checkable else rng.randint(48, min(256, max_context // 4)),
        "temperature": rng.choice(TEMPERATURES),
        "top_p": rng.choice(TOP_PS),
        "seed": rng.getrandbits(31),
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": rng.choice((0, 1, 5)),
        "return_token_ids": True,
    }
    return body


def generate(seed: int, count: int, max_context: int = 2048) -> list[Challenge]:
    """``count`` challenges for a round seed; the same seed always gives the same list."""
    names = list(FAMILY_WEIGHTS)
    rng = random.Random(seed)
    challenges = []
    for index in range(count):
        challenge_seed = rng.getrandbits(63)
        local = random.Random(challenge_seed)
        family = local.choices(names, weights=[FAMILY_WEIGHTS[n] for n in names])[0]
        task = FAMILIES[family](local)
        challenges.append(Challenge(family=task.family, seed=challenge_seed, body=_body(task, local, max_context), answer=task.answer))
    return challenges

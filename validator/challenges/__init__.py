"""Challenges for a validation round, different for every miner: checkable tasks, open
prompts of many kinds, and replays of real users' prompts, all drawn from one seed.

``round_seed`` mixes the hash of the round's block (unknown to miners before the block) with
the validator's hotkey, the round number and a secret of the tempo (``tempo_secret``, from a
master secret the validator keeps, ``round_secret``): a miner that has read this code cannot
recompute a round's challenges from public values and recognise them. The validator commits
each tempo's secret's hash on chain before its rounds use it and reveals the secret the next
tempo (``seed_commitment``), so anyone can then recompute and replay its rounds, and it cannot
choose a secret after seeing the block; the round's seed is stored with it too;
``miner_seed`` mixes that with a miner's hotkey,
so no two miners are sent the same body and one computation cannot answer two hotkeys.
``generate`` turns a seed into challenges deterministically; each challenge's request is
built by ``protocol.requests.miner_request``, as a gateway's is, so its fields and their
order are a user's.

What users choose is copied, not invented: ``UserPrompts.shapes`` holds what users' recent
requests chose (sampling, stop strings, penalties, which fields they set and to what, and
their ``max_tokens``), and a challenge draws one of them when there are any. A share ``REPLAY_SHARE`` of the challenges are a user's own
recent prompt, replayed with a fresh seed (when a gateway allows its users' prompts to be
replayed, ``slmnet gateway --replay-prompts``): those no miner can tell from users, since
they are users'. A replay is recorded with its round, so the round stays rebuildable.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from protocol.commitment import SeedCommitment
from protocol.families import check_families
from protocol.requests import miner_request
from validator.challenges.tasks import FAMILIES, Answer, Task, grade

__all__ = [
    "Challenge",
    "generate",
    "grade",
    "round_seed",
    "round_secret",
    "miner_seed",
    "FAMILY_WEIGHTS",
    "REPLAY",
    "REPLAY_SHARE",
    "UserPrompts",
    "slots",
    "SAMPLING_FIELDS",
    "sampling_of",
]

# Share of each generated family (keyed by family name): checkable tasks about half, open prompts of four kinds the rest.
FAMILY_WEIGHTS = {
    "arithmetic": 0.08,
    "reverse_string": 0.07,
    "sort_numbers": 0.07,
    "count_letter": 0.06,
    "json_format": 0.07,
    "uppercase": 0.06,
    "multi_turn": 0.09,
    "open_prompt": 0.12,
    "question": 0.12,
    "rewrite": 0.1,
    "code": 0.08,
    "conversation": 0.08,
}
check_families(FAMILY_WEIGHTS, "validator.challenges.FAMILY_WEIGHTS")
REPLAY = "replay"  # the family of a replayed user prompt
REPLAY_SHARE = 0.25  # of the challenges, when users' prompts may be replayed
# What a challenge copies from a user's recent request, so no field tells a miner which is which: the
# sampling choices, stop strings and penalties (the verifier models temperature and top_p; with the others
# it keeps the checks that still apply, as it does on users' own answers), and the answer's budget.
SAMPLING_FIELDS = ("temperature", "top_p", "top_logprobs", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "top_k", "min_p")
MAX_CHALLENGE_TOKENS = 1024  # a copied budget at most (and half the model's context): the reference's work per answer
# When no user request is known yet: what the verifier must be able to check, spread as users spread it.
TEMPERATURES = (0.0, 0.0, 0.3, 0.6, 0.7, 1.0)
TOP_PS = (1.0, 1.0, 0.95, 0.9)


@dataclass(frozen=True)
class Challenge:
    family: str
    seed: int  # the challenge's own seed (derived from the miner's seed and its index)
    fields: dict[str, Any]  # the conversation and sampling choices (``miner_request`` adds the rest)
    max_tokens: int
    answer: Optional[Answer]

    def request(self, model: str) -> dict[str, Any]:
        return miner_request(self.fields, model=model, max_tokens=self.max_tokens, seed=self.seed & 0x7FFFFFFF)

    @property
    def body(self) -> dict[str, Any]:
        """The request without a model (what the tests and the record look at)."""
        return {k: v for k, v in self.request("").items() if k != "model"}


@dataclass(frozen=True)
class UserPrompts:
    """What a validator knows of users' recent requests: the sampling choices they made, and the
    prompts it may replay (each a conversation with its sampling choices and max_tokens)."""

    shapes: Sequence[Mapping[str, Any]] = ()
    replays: Sequence[Mapping[str, Any]] = field(default_factory=tuple)


def sampling_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a challenge may copy of a user's request: its sampling choices and its ``max_tokens``."""
    return {k: body[k] for k in (*SAMPLING_FIELDS, "max_tokens") if body.get(k) is not None}


def _budget(copied: Any, max_context: int) -> int:
    return max(1, min(int(copied), MAX_CHALLENGE_TOKENS, max_context // 2))


def round_seed(block_hash: str, validator_hotkey: str, round_index: int, secret: bytes) -> int:
    digest = hashlib.sha256(secret + f"|{block_hash}|{validator_hotkey}|{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def tempo_secret(master: bytes, tempo: int) -> bytes:
    """The secret of the round seeds in ``tempo`` (block // (tempo length + 1)): safe to reveal once the tempo is over,
    since no other tempo's secret follows from it."""
    return hmac.new(master, f"slmnet-round-seeds|{tempo}".encode(), hashlib.sha256).digest()


def seed_commitment(master: bytes, tempo: int, revealed_tempo: Optional[int]) -> SeedCommitment:
    """What a validator commits on chain for ``tempo``: its secret's hash, and the secret of ``revealed_tempo`` (the
    tempo its previous commitment was for), now over."""
    revealed = tempo_secret(master, revealed_tempo).hex() if revealed_tempo is not None and revealed_tempo < tempo else None
    return SeedCommitment(
        tempo=tempo, next=hashlib.sha256(tempo_secret(master, tempo)).hexdigest(), revealed_tempo=revealed_tempo if revealed else None, revealed=revealed
    )


def round_secret(path: Path) -> bytes:
    """The validator's master secret for its round seeds: 32 random bytes, made at its first start and kept in
    ``path`` (readable by its user only)."""
    if not path.exists():
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    secret = path.read_bytes()
    if len(secret) < 16:
        raise ValueError(f"{path} holds {len(secret)} bytes, not a round secret: remove it to make a new one")
    return secret


def miner_seed(seed: int, hotkey: str) -> int:
    """The seed of one miner's challenges in the round of ``seed``."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{hotkey}".encode()).digest()[:8], "big")


def _sampling(rng: random.Random, users: UserPrompts) -> dict[str, Any]:
    if users.shapes:
        return sampling_of(rng.choice(users.shapes))
    return {"temperature": rng.choice(TEMPERATURES), "top_p": rng.choice(TOP_PS), "top_logprobs": rng.choice((0, 1, 5))}


def _generated(rng: random.Random, seed: int, users: UserPrompts, max_context: int) -> Challenge:
    names = list(FAMILY_WEIGHTS)
    family = rng.choices(names, weights=[FAMILY_WEIGHTS[n] for n in names])[0]
    task: Task = FAMILIES[family](rng)
    checkable = task.answer is not None
    max_tokens = rng.randint(16, 64) if checkable else rng.randint(48, min(256, max_context // 4))
    fields = {"messages": [dict(m) for m in task.messages], **_sampling(rng, users)}
    if task.response_format is not None:
        fields["response_format"] = task.response_format
    if (copied := fields.pop("max_tokens", None)) is not None:  # a user's budget, where users are known
        max_tokens = _budget(copied, max_context)
    return Challenge(family=task.family, seed=seed, fields=fields, max_tokens=max_tokens, answer=task.answer)


def _replayed(rng: random.Random, seed: int, users: UserPrompts, max_context: int) -> Challenge:
    """A user's prompt with everything the user chose (sampling, stop strings, penalties, budget, the grammar of
    its structured output or tools) and a fresh seed."""
    prompt = rng.choice(users.replays)
    fields = {"messages": [dict(m) for m in prompt["messages"]], **sampling_of(prompt)}
    if prompt.get("response_format") is not None:
        fields["response_format"] = prompt["response_format"]
    max_tokens = _budget(fields.pop("max_tokens", 256), max_context)
    return Challenge(family=REPLAY, seed=seed, fields=fields, max_tokens=max_tokens, answer=None)


def slots(seed: int, count: int) -> list[tuple[int, bool]]:
    """Each challenge's own seed, and whether it is a replay's slot (a user's prompt, when there are any)."""
    rng = random.Random(seed)
    seeds = [rng.getrandbits(63) for _ in range(count)]
    return [(s, random.Random(s).random() < REPLAY_SHARE) for s in seeds]


def generate(seed: int, count: int, max_context: int = 2048, users: UserPrompts = UserPrompts()) -> list[Challenge]:
    """``count`` challenges for a seed (a miner's: ``miner_seed``); the same seed and user prompts
    always give the same list, and a generated challenge's family and prompt depend on the seed
    alone (its sampling choices and budget are a user's, where users are known)."""
    challenges = []
    for challenge_seed, replay in slots(seed, count):
        local = random.Random(challenge_seed)
        local.random()  # the slot's draw
        challenges.append((_replayed if replay and users.replays else _generated)(local, challenge_seed, users, max_context))
    return challenges

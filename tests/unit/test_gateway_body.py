"""What the gateway sends a miner for a user's request: looks like a challenge, carries a seed."""

from __future__ import annotations

from gateway.answer import Generation
from validator.challenges import generate


def _generation(**body) -> Generation:
    return Generation(chat=True, body={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, **body}, model="m", max_tokens=16, prompt_tokens=3)


def test_every_miner_of_one_answer_gets_the_same_seed_and_a_users_seed_is_kept():
    gen = _generation()
    first = gen.upstream_body()
    assert isinstance(first["seed"], int) and 0 <= first["seed"] < 2**31
    gen.text, gen.upstream_tokens = "hello", 2
    assert gen.upstream_body()["seed"] == first["seed"] == gen.upstream_body(from_start=True)["seed"]
    assert len({_generation().upstream_body()["seed"] for _ in range(4)}) > 1  # drawn per request (all equal: p = 2^-93)
    assert _generation(seed=7).upstream_body()["seed"] == 7


def test_a_users_request_has_the_fields_a_challenge_has():
    challenge = generate(3, 1)[0].request("m")
    user = _generation(temperature=0.7, top_p=0.9, top_logprobs=1).upstream_body()
    assert set(challenge) == set(user), set(challenge) ^ set(user)

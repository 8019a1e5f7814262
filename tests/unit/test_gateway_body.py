"""What the gateway sends a miner for a user's request: looks like a challenge, carries a seed."""

from __future__ import annotations

from gateway.answer import Generation
from validator.challenges import UserPrompts, generate


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


def test_a_users_request_has_the_fields_of_a_challenge_in_the_same_order():
    for challenge in generate(3, 20):
        body = challenge.request("m")
        user = _generation(**{k: body[k] for k in ("temperature", "top_p", "top_logprobs", "response_format") if k in body}).upstream_body()
        assert list(body) == list(user)  # the same keys, sent in the same order: json.dumps(body) differs only in values
    # A challenge copying what users send (here: users who set only a temperature) has their fields, no more.
    shaped = generate(4, 10, users=UserPrompts(shapes=[{"temperature": 0.5}]))
    for c in shaped:  # (and a JSON task's response_format, which users who ask for JSON send too)
        format_ = {"response_format": c.fields["response_format"]} if "response_format" in c.fields else {}
        assert list(c.request("m")) == list(_generation(temperature=0.5, **format_).upstream_body())

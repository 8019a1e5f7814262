"""Every request body a miner is sent, built one way.

A validator's challenge and a gateway's upstream request go through ``miner_request``: the
fields every miner request carries (streamed with usage, token ids, a seed, logprobs for a
conversation) are set here, and the body's keys come out in one fixed order, so neither
the set of fields nor their order tells a miner who is asking. What still differs is what a
user chose (a temperature or none, a stop string); challenges copy those choices from what
users send (``validator.challenges``).
"""

from __future__ import annotations

from typing import Any, Mapping

# The order a body's keys are sent in; keys not named here follow, alphabetically.
FIELD_ORDER = (
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "return_token_ids",
    "return_tokens_as_token_ids",
    "continue_final_message",
    "add_generation_prompt",
)
_RANK = {name: index for index, name in enumerate(FIELD_ORDER)}
# What a user's body may carry that never reaches a miner: the gateway decides these per miner.
# (Tools reach a miner as plain turns and a grammar: ``protocol.tools``.)
GATEWAY_ONLY = ("stream", "stream_options", "n", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls")


def miner_request(fields: Mapping[str, Any], *, model: str, max_tokens: int, seed: int) -> dict[str, Any]:
    """The body sent to a miner: ``fields`` (the conversation or prompt and the sampling choices),
    with the model, budget and seed given, streaming with usage, token ids, logprob tokens as ids and
    (for a conversation) logprobs — the fields the verifier needs — in ``FIELD_ORDER``."""
    body = {k: v for k, v in fields.items() if k not in GATEWAY_ONLY}
    # Logprob entries name their tokens by id (``token_id:N``): the gateway spells them with the model's tokenizer, so no
    # string a miner writes there reaches a user.
    body.update(model=model, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}, return_token_ids=True, return_tokens_as_token_ids=True)
    if body.get("seed") is None:
        body["seed"] = seed
    if "messages" in body:
        body["logprobs"] = True
    return dict(sorted(body.items(), key=lambda item: (_RANK.get(item[0], len(_RANK)), item[0])))

"""Structured output: the one grammar a request's ``response_format`` names, as miners' engines and validators build it.

A miner's engine decodes under the grammar (vLLM's structured outputs, the xgrammar backend) and a validator
rebuilds the same grammar to verify the answer (``validator.grammar``): every token must be one the grammar
allows at its place, and the reference's distribution is read over the allowed tokens only. Both sides must
build the grammar identically, so its settings live here: the backend, and JSON written without optional
whitespace (``{"a":1}``). A grammar that lets the model choose whitespace wastes a small model's tokens on it
(the tiny test model wrote 60 tokens of spaces and newlines and never closed an object) and gives a miner
choices that carry nothing.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional

BACKEND = "xgrammar"  # vLLM's structured outputs backend: miners' engines are started with it, validators rebuild its grammars
ANY_WHITESPACE = False
SEPARATORS = (",", ":")
MAX_SCHEMA_BYTES = 64 << 10
# What a miner's engine is started with (``vllm serve --structured-outputs-config``).
ENGINE_CONFIG = json.dumps({"backend": BACKEND, "disable_any_whitespace": not ANY_WHITESPACE})


Grammar = tuple[Literal["json_schema", "json_object"], str]


def grammar_of(request: dict[str, Any]) -> Optional[Grammar]:
    """The grammar a miner request's body decodes under, as (kind, JSON schema text); None for free text.
    The schema text is what vLLM compiles (``json.dumps`` of the schema, its keys in the order sent)."""
    spec = request.get("response_format") or {}
    if spec.get("type") == "json_schema":
        return "json_schema", json.dumps((spec.get("json_schema") or {}).get("schema") or {})
    if spec.get("type") == "json_object":
        return "json_object", '{"type": "object"}'
    return None

"""Tools (function calling) on models that have no tool format of their own, as a grammar.

The subnet's small models were not trained on a tool-call syntax their chat templates render, so slmnet gives
them one, the same for every model: the tools are described in a system message, and the answer is one JSON
object under a grammar (``protocol.structured``) — ``{"name": …, "arguments": {…}}`` naming one of the tools,
with arguments that follow its parameters' schema, or (``tool_choice`` "auto") ``{"content": "…"}`` for a
plain answer. A miner sees an ordinary conversation with a ``response_format``: its engine decodes under the
grammar and a validator verifies the answer under it like any structured output; only the gateway turns the
JSON back into OpenAI's ``tool_calls``. Earlier turns are written the same way: an assistant's tool calls as
the JSON it would have written, a tool's result as a user turn naming the function (templates such as Gemma's
take only alternating user and assistant turns).

One call an answer (``parallel_tool_calls`` is accepted; a model asks for one call a turn).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Optional

TOOLS_PROMPT = (
    "You can call functions. To call one, answer with only a JSON object "
    '{{"name": <function name>, "arguments": <its arguments>}}.{plain} The functions, as JSON schemas:\n{specs}'
)
PLAIN = ' To answer without a call, answer {"content": <your answer>}.'


def plan(tools: list[dict[str, Any]], choice: Any) -> Optional[list[dict[str, Any]]]:
    """The tools the answer may call under ``tool_choice`` (None: "none", answered as free text)."""
    if choice == "none" or not tools:
        return None
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        named = [t for t in tools if t["function"]["name"] == name]
        if not named:
            raise ValueError(f"tool_choice names '{name}', which is not among the tools")
        return named
    return tools


def grammar(callable_tools: list[dict[str, Any]], plain: bool) -> dict[str, Any]:
    """The ``response_format`` an answer is decoded under: a call of one of ``callable_tools``, or (``plain``) content."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t["function"]["name"]}, "arguments": t["function"].get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in callable_tools
    ]
    answer = {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": {"anyOf": [*calls, *([answer] if plain else [])]}}}


def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]], choice: Any) -> tuple[list[dict[str, Any]], Optional[dict[str, Any]]]:
    """The conversation as plain turns, and the grammar its answer is decoded under (None: free text).
    ValueError when ``tool_choice`` names a tool that is not given, or a tool result answers no call."""
    callable_tools = plan(tools, choice)
    names: dict[str, str] = {}  # a call's id → its function
    plain = []
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls"):
            call = message["tool_calls"][0]["function"]
            for each in message["tool_calls"]:
                names[each["id"]] = each["function"]["name"]
            plain.append(
                {"role": "assistant", "content": json.dumps({"name": call["name"], "arguments": _arguments(call["arguments"])}, separators=(",", ":"))}
            )
        elif message["role"] == "tool":
            name = names.get(message.get("tool_call_id") or "")
            if name is None:
                raise ValueError(f"a tool message answers tool_call_id {message.get('tool_call_id')!r}, which no earlier assistant turn called")
            plain.append({"role": "user", "content": f"The result of {name}: {message['content']}"})
        else:
            plain.append({k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")})
    if callable_tools is None:
        return plain, None
    specs = "\n".join(json.dumps(t["function"], separators=(",", ":")) for t in callable_tools)
    system = TOOLS_PROMPT.format(plain=PLAIN if choice in (None, "auto") else "", specs=specs)
    if plain and plain[0]["role"] in ("system", "developer"):
        plain[0] = {"role": "system", "content": plain[0]["content"] + "\n\n" + system}
    else:
        plain.insert(0, {"role": "system", "content": system})
    return plain, grammar(callable_tools, plain=choice in (None, "auto"))


def _arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments  # a client's own malformed arguments: shown as the string it sent


def message_of(text: str, finish_reason: Optional[str], tools: list[dict[str, Any]], choice: Any) -> tuple[dict[str, Any], Optional[str]]:
    """The assistant's message an answer under the tool grammar of ``tools`` and ``choice`` is, with its finish
    reason: a call ("tool_calls"), content, or (cut short by max_tokens) the unfinished JSON as content.
    ValueError for a whole answer that grammar could not have produced: a miner's that ignored it."""
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        if finish_reason == "length":
            return {"role": "assistant", "content": text}, finish_reason
        raise ValueError("a tool answer that is not JSON") from None
    names = {t["function"]["name"] for t in plan(tools, choice) or []}
    if isinstance(answer, dict) and set(answer) == {"name", "arguments"} and answer["name"] in names:
        call = {
            "id": "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": answer["name"], "arguments": json.dumps(answer["arguments"], ensure_ascii=False)},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    if choice in (None, "auto") and isinstance(answer, dict) and set(answer) == {"content"} and isinstance(answer["content"], str):
        return {"role": "assistant", "content": answer["content"]}, finish_reason
    raise ValueError("a tool answer that is neither a call of a given tool nor content the choice allows")

"""Tools as plain turns and a grammar (``protocol.tools``)."""

import json

import pytest

from protocol import tools
from protocol.structured import grammar_of

ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
NOTE = {"type": "function", "function": {"name": "note"}}


def test_a_conversation_with_tool_turns_becomes_plain_turns_under_a_grammar_of_calls():
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 2."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
    ]
    plain, grammar = tools.render(messages, [ADD, NOTE], "auto")
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user"] and all(set(m) == {"role", "content"} for m in plain)
    assert plain[0]["content"].startswith("Be brief.\n\n") and '"name":"note"' in plain[0]["content"] and '{"content":' in plain[0]["content"]
    assert plain[2]["content"] == '{"name":"add","arguments":{"a":2}}' and plain[3]["content"] == "The result of add: 4"
    kind, schema = grammar_of({"response_format": grammar})
    options = json.loads(schema)["anyOf"]
    assert kind == "json_schema" and [o["properties"].get("name", {}).get("const") for o in options] == ["add", "note", None]
    _, required = tools.render(messages[:2], [ADD, NOTE], {"type": "function", "function": {"name": "note"}})
    assert [o["properties"]["name"]["const"] for o in required["json_schema"]["schema"]["anyOf"]] == ["note"]  # named: that one, no content
    assert tools.render(messages, [ADD], "none")[1] is None  # "none": free text, the history still plain
    with pytest.raises(ValueError, match="'sum'"):
        tools.render(messages[:2], [ADD], {"type": "function", "function": {"name": "sum"}})
    with pytest.raises(ValueError, match="call_9"):
        tools.render([*messages[:2], {"role": "tool", "content": "4", "tool_call_id": "call_9"}], [ADD], "auto")


def test_the_answer_under_the_grammar_becomes_openais_message():
    message, finish = tools.message_of('{"name":"add","arguments":{"a":2}}', "stop", [ADD], "auto")
    assert finish == "tool_calls" and message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2}'} and message["tool_calls"][0]["id"].startswith("call_")
    assert tools.message_of('{"content":"It is 4."}', "stop", [ADD], "auto") == ({"role": "assistant", "content": "It is 4."}, "stop")
    assert tools.message_of('{"name":"ad', "length", [ADD], "auto") == ({"role": "assistant", "content": '{"name":"ad'}, "length")  # cut by max_tokens


def test_a_whole_answer_the_tool_grammar_could_not_have_produced_is_refused():
    """What a miner that ignores the grammar sends is its failure, never a user's 500 or a call of a tool nobody gave."""
    for text, choice in (
        ("It is sunny.", "auto"),  # free text ended by the model
        ('{"name":"add"}', "auto"),  # a call without arguments
        ('{"name":"rm","arguments":{}}', "auto"),  # a tool not given
        ('{"content":"hi"}', "required"),  # content where only calls are allowed
        ('{"content":5}', "auto"),
        ("[1]", "auto"),
    ):
        with pytest.raises(ValueError):
            tools.message_of(text, "stop", [ADD], choice)

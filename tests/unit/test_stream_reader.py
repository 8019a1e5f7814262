"""protocol/sse.py and protocol/responses.py: a miner's stream read by the spec, each breach a StreamViolation."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.responses import StreamFold, parse_event
from protocol.sse import SseDecoder, SseLimits, StreamViolation

STREAM = (
    b": keep-alive comment\r\n"
    b'data: {"a": 1}\r\n\r\n'
    b'data:{"b": 2}\n\n'
    b'event: ignored\nid: 7\ndata: {"c":\ndata: 3}\r\r'
    b"data: [DONE]\n\n"
    b'data: {"half": tru'
)  # a cut last event is dropped, as the spec says


def _decode(chunks: list[bytes], limits: SseLimits = SseLimits()) -> list[str]:
    decoder = SseDecoder(limits)
    return [data for chunk in chunks for data in decoder.feed(chunk)]


def test_events_are_read_as_the_spec_says():
    assert _decode([STREAM]) == ['{"a": 1}', '{"b": 2}', '{"c":\n3}', "[DONE]"]


@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_the_same_events_however_the_network_splits_the_bytes(cuts):
    bounds = [0, *sorted(cuts), len(STREAM)]
    assert _decode([STREAM[a:b] for a, b in zip(bounds, bounds[1:])]) == ['{"a": 1}', '{"b": 2}', '{"c":\n3}', "[DONE]"]


def test_oversized_events_streams_and_bad_utf8_are_violations_before_the_rest_is_read():
    with pytest.raises(StreamViolation, match="event is over"):
        _decode([b"data: " + b"x" * 2000], SseLimits(max_event_bytes=1000))  # no line end yet: refused anyway
    with pytest.raises(StreamViolation, match="stream is over"):
        _decode([b"data: {}\n\n"] * 200, SseLimits(max_stream_bytes=1000))
    with pytest.raises(StreamViolation, match="UTF-8"):
        _decode([b"data: \xff\xfe\n\n"])


def _chunk(ids: list[int], text: str, finish: str | None = None, **extra) -> str:
    logprobs = {"content": [{"token": f"token_id:{i}", "logprob": -0.5, "bytes": [116], "top_logprobs": []} for i in ids]}
    choice = {"index": 0, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": finish, "token_ids": ids}
    return json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice], **extra})


def _fold(*events: str, max_tokens: int = 8) -> StreamFold:
    fold = StreamFold(chat=True, max_tokens=max_tokens, logprobs=True)
    for data in events:
        fold.add(data)
    fold.close()
    return fold


def test_an_honest_stream_folds_into_one_answer():
    usage = json.dumps(
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            "system_fingerprint": "vllm",
        }
    )
    fold = _fold(_chunk([], "", prompt_token_ids=[1, 2, 3]), _chunk([5, 6], "ab"), _chunk([7], "c", "length"), usage, "[DONE]")
    assert (fold.prompt_token_ids, fold.token_ids, fold.text, fold.finish_reason, fold.usage.completion_tokens) == ([1, 2, 3], [5, 6, 7], "abc", "length", 3)
    assert len(fold.logprobs) == 3


@pytest.mark.parametrize(
    "events, reason",
    [
        (["[1, 2]"], "JSON list"),
        (['{"error": "boom"}'], "ErrorEvent"),
        (["{not json"], "not JSON"),
        (["[" * 5000 + "]" * 5000], "nested too deeply|JSON list"),
        ([_chunk([1], "a").replace('"index": 0', '"index": 1')], "index"),
        ([_chunk([-4], "a")], "negative"),
        ([_chunk([1] * 9, "a")], "more token ids than max_tokens"),
        ([_chunk([1], "a", "stop"), _chunk([2], "b")], "after the finish_reason"),
        ([_chunk([1], "a", "stop"), "[DONE]", "[DONE]"], "after \\[DONE\\]"),
        ([_chunk([1], "a", "stop"), "[DONE]", _chunk([], "")], "after \\[DONE\\]"),
        ([_chunk([1], "a", "stop")], "without \\[DONE\\]"),
        ([_chunk([1], "a")], "without a finish_reason"),
        (
            [_chunk([1, 2], "a", "stop").replace(', {"token": "token_id:2", "logprob": -0.5, "bytes": [116], "top_logprobs": []}', "", 1), "[DONE]"],
            "logprob entries",
        ),
        # A logprob's token is named by its id, the chunk's (the user reads it spelled from the id): never a string of the miner's.
        ([_chunk([1], "a", "stop").replace('"token_id:1"', '"<script>"'), "[DONE]"], "not the chunk's token id"),
        ([_chunk([1], "a", "stop").replace('"token_id:1"', '"token_id:2"'), "[DONE]"], "not the chunk's token id"),
        ([_chunk([1], "a", "stop").replace('"top_logprobs": []', '"top_logprobs": [{"token": "BUY", "logprob": -1.0}]'), "[DONE]"], "token_id:N"),
        ([_chunk([1], "a", "tool_calls"), "[DONE]"], "finish_reason"),
        ([_chunk([1], "a", "stop").replace("-0.5", "NaN"), "[DONE]"], "not JSON"),
    ],
)
def test_every_breach_is_a_violation_with_its_reason(events, reason):
    with pytest.raises(StreamViolation, match=reason):
        _fold(*events)


def test_an_engines_error_event_is_kept_as_the_miners_failure_not_a_breach():
    fold = _fold(_chunk([1], "a"), json.dumps({"error": {"message": "<b>engine died</b>", "type": "server_error", "code": 500}}))
    assert fold.error == "<b>engine died</b>" and fold.finish_reason is None


def test_fields_a_miner_adds_are_dropped():
    chunk = parse_event(_chunk([1], "a", injected="<script>"), chat=True)
    assert "injected" not in msgspec.to_builtins(chunk)


def test_the_gateway_binds_each_chunks_text_to_what_its_ids_spell(tmp_path):
    from models.tiny import build_tiny
    from models.tokenizer import ModelTokenizer, TextBinding

    build_tiny(tmp_path / "s0", seed=0)
    tokenizer = ModelTokenizer(tmp_path / "s0")
    ids = tokenizer.fast.encode("Paris is the capital of France.", add_special_tokens=False).ids
    honest = TextBinding(tokenizer)
    for n in range(1, len(ids) + 1):  # one id a chunk, its text what the full decode adds (another algorithm than the binding's)
        honest.feed([ids[n - 1]], tokenizer.fast.decode(ids[:n])[len(tokenizer.fast.decode(ids[: n - 1])) :])
    assert honest.spelled == "Paris is the capital of France." and honest.shown == len(honest.spelled)
    shown = TextBinding(tokenizer)
    shown.feed(ids, "Paris is")  # a prefix: what an engine shows while it holds text back
    with pytest.raises(StreamViolation, match="not what the token ids spell"):
        shown.feed([], " <script>")
    with pytest.raises(StreamViolation, match="outside the model's vocabulary"):
        TextBinding(tokenizer).feed([10**6], "x")
    # a whole answer that stopped on an end token with text (Gemma's newline): vLLM never shows that token's text
    from models.tokenizer import binding_reasons

    newline = tokenizer.fast.encode("\n", add_special_tokens=False).ids
    assert len(newline) == 1 and binding_reasons(tokenizer, ids + newline, "Paris is the capital of France.", None, ended_by=newline[0]).reasons == []
    assert binding_reasons(tokenizer, ids + newline, "Paris is the capital of France.", None).reasons  # not an end token: its text is missing
    # only the last id, and only that id: an end token in the middle spells its text as any other
    assert binding_reasons(tokenizer, newline + ids, "Paris is the capital of France.", None, ended_by=newline[0]).reasons
    # a stop string ends the text before the ids that spell it: the ids show the engine stopped there; text cut anywhere else does not
    on_stop = binding_reasons(tokenizer, ids, "Paris is the", [" capital", "x"])
    assert on_stop.reasons == [] and on_stop.on_stop
    assert not binding_reasons(tokenizer, ids, "Paris is the capital of France.", [" capital"]).on_stop


def test_a_text_completions_logprob_tokens_must_be_its_ids_too():
    def text_chunk(tokens: list[str], tops: list) -> str:
        logprobs = {"tokens": tokens, "token_logprobs": [-0.5] * len(tokens), "top_logprobs": tops, "text_offset": [0] * len(tokens)}
        choice = {"index": 0, "text": "a", "logprobs": logprobs, "finish_reason": "length", "token_ids": [1]}
        return json.dumps({"id": "x", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]})

    fold = StreamFold(chat=False, max_tokens=8)
    fold.add(text_chunk(["token_id:1"], [{"token_id:1": -0.5, "token_id:7": -2.0}]))
    with pytest.raises(StreamViolation, match="not the chunk's token id"):
        StreamFold(chat=False, max_tokens=8).add(text_chunk(["<b>BUY</b>"], [None]))
    with pytest.raises(StreamViolation, match="alternative"):
        StreamFold(chat=False, max_tokens=8).add(text_chunk(["token_id:1"], [{"<script>": -0.1}]))


@pytest.mark.parametrize("chat", [True, False])
def test_a_chunk_short_of_logprobs_breaks_the_stream_where_it_comes_not_at_the_end(chat):
    """Asked for, logprobs come one per token id in every chunk: a miner doubling its ids or dropping a chunk's
    logprobs is caught on that chunk, before the gateway hands a user an answer with fewer entries than it charges
    (a failover after a later breach would otherwise keep the short part)."""

    def chunk(ids: list[int], logprobs: bool) -> str:
        if chat:
            entries = [{"token": f"token_id:{ids[0]}", "logprob": -0.5, "top_logprobs": []}]
            choice = {"index": 0, "delta": {"content": "a"}, "token_ids": ids, "logprobs": {"content": entries} if logprobs else None}
        else:
            lp = {"tokens": [f"token_id:{ids[0]}"], "token_logprobs": [-0.5], "top_logprobs": None, "text_offset": [0]}
            choice = {"index": 0, "text": "a", "token_ids": ids, "logprobs": lp if logprobs else None}
        return json.dumps({"id": "x", "object": "chat.completion.chunk" if chat else "text_completion", "created": 1, "model": "m", "choices": [choice]})

    StreamFold(chat=chat, max_tokens=8, logprobs=True).add(chunk([5], logprobs=True))
    StreamFold(chat=chat, max_tokens=8, logprobs=False).add(chunk([5], logprobs=False))  # not asked: none needed
    for ids, logprobs in (([5, 5], True), ([5], False)):
        with pytest.raises(StreamViolation, match="logprob entries for a chunk's"):
            StreamFold(chat=chat, max_tokens=8, logprobs=True).add(chunk(ids, logprobs))
    if not chat:  # a text completion's four lists agree in length
        torn = json.loads(chunk([5], True))
        torn["choices"][0]["logprobs"]["text_offset"] = []
        with pytest.raises(StreamViolation, match="differ in length"):
            StreamFold(chat=False, max_tokens=8, logprobs=True).add(json.dumps(torn))

import pytest

from dinet.errors import MalformedMessage
from dinet.wire.messages import (
    ChatMessage,
    EndFrame,
    ErrorFrame,
    GenerationParams,
    InferRequest,
    TokenFrame,
    Usage,
    decode_reply,
    decode_request,
    encode,
)


def test_a_request_survives_encoding():
    params = GenerationParams(messages=(ChatMessage(role="user", content="hi"),), seed=7)
    request = InferRequest(request_id="r1", model_id="m", params=params)
    assert decode_request(encode(request)) == request


@pytest.mark.parametrize(
    "frame",
    [
        TokenFrame(index=3, token_id=42, text="é"),
        EndFrame(
            finish_reason="length",
            usage=Usage(prompt_tokens=5, completion_tokens=9),
            ttft_ms=12.5,
            tokens_per_s=80.0,
        ),
        ErrorFrame(code="busy", message="full"),
    ],
)
def test_replies_survive_encoding(frame):
    assert decode_reply(encode(frame)) == frame


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"kind": "infer"}',
        b'{"kind": "nope", "request_id": "a", "params": {"prompt": "x"}}',
        b'{"kind": "infer", "request_id": "a", "params": {"prompt": "x"}, "extra": 1}',
        b'{"kind": "infer", "request_id": "a", "params": {"prompt": "x", "max_tokens": 0}}',
        b'{"kind": "infer", "request_id": "a", "params": {"prompt": "x", "temperature": -1}}',
        b'{"kind": "infer", "request_id": "a", "params": {}}',
        b'{"kind": "infer", "request_id": "a", "params": {"prompt": "x", '
        b'"messages": [{"role": "user", "content": "y"}]}}',
        b'{"kind": "infer", "request_id": "a", "params": {"messages": [{"role": "god", "content": "y"}]}}',
        b"\xff\xfe",
        b'{"kind": "infer", "request_id": "a", "params": {"prompt": "x", "temperature": NaN}}',
        b'{"kind": "infer", "request_id": "a", "params": {"prompt": "x", "max_tokens": 5.0}}',
    ],
)
def test_malformed_requests_raise_a_typed_error(payload):
    with pytest.raises(MalformedMessage):
        decode_request(payload)


def test_an_unknown_reply_kind_is_refused():
    with pytest.raises(MalformedMessage):
        decode_reply(b'{"kind": "surprise"}')


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_numbers_that_are_not_json_are_refused(token):
    payload = (
        b'{"kind": "end", "finish_reason": "stop", "usage": {"prompt_tokens": 1, '
        b'"completion_tokens": 1}, "ttft_ms": 1.0, "tokens_per_s": ' + token.encode() + b"}"
    )
    with pytest.raises(MalformedMessage):
        decode_reply(payload)


# The same payload's count is checked by the browser node's reader (web/test/messages.test.mjs).
TOOL_TURNS = (
    '{"request_id":"r","params":{"messages":['
    '{"role":"user","content":"héllo"},'
    '{"role":"assistant","content":"","tool_calls":[{"id":"c1","name":"get_weather","arguments":"{\\"city\\":\\"Paris\\"}"}]},'
    '{"role":"tool","content":"18 °C","tool_call_id":"c1"}],'
    '"tools":[{"name":"get_weather","description":"The weather 😀",'
    '"parameters":"{\\"type\\":\\"object\\"}"}]}}'
)


def test_tool_definitions_and_calls_count_towards_the_prompts_characters():
    params = decode_request(TOOL_TURNS.encode()).params
    contents = len("héllo") + len("18 °C")
    call = len("get_weather") + len('{"city":"Paris"}')
    tool = len("get_weather") + len("The weather 😀") + len('{"type":"object"}')
    assert params.prompt_chars == contents + call + tool == 78  # code points, as the JS reader counts

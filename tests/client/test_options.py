"""AskOptions: one value per request, from the client's settings, with typed errors for bad values."""

from __future__ import annotations

import dataclasses

import pytest

from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.errors import RequestError


def test_options_start_from_the_settings_and_the_request_overrides_them(tmp_path):
    settings = ClientSettings(
        home=tmp_path,
        mdns=False,
        max_price=0.5,
        verify_rate=0.25,
        discover_timeout_s=3.0,
        request_timeout_s=40.0,
    )
    options = AskOptions.from_settings(settings, model_id="m", max_price=0.1, only_peers=["p1", "p2"])
    assert (options.model_id, options.max_price, options.verify_rate) == ("m", 0.1, 0.25)
    assert (options.discover_timeout_s, options.request_timeout_s) == (3.0, 40.0)
    assert options.only_peers == frozenset({"p1", "p2"})  # any collection in, a frozenset kept
    assert AskOptions.from_settings(settings).max_price == 0.5


def test_options_are_frozen_and_changed_by_copy():
    options = AskOptions(policy="cost")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.policy = "latency"  # type: ignore[misc]
    changed = options.with_(sharded=True)
    assert (changed.sharded, changed.policy, options.sharded) == (True, "cost", None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("policy", "fastest"),
        ("max_price", -1.0),
        ("max_price", float("nan")),
        ("verify_rate", 1.5),
        ("verify_rate", "all"),
        ("deadline_s", 0.0),
        ("request_timeout_s", -3),
        ("discover_timeout_s", True),
        ("only_peers", "12D3KooW"),  # a string is a collection of characters, not of peer ids
        ("only_peers", []),
        ("sharded", "yes"),
    ],
)
def test_a_bad_value_is_a_request_error_naming_the_option(field, value):
    with pytest.raises(RequestError) as refused:
        AskOptions(**{field: value})
    assert refused.value.param == field


def test_an_unknown_option_is_a_request_error():
    with pytest.raises(RequestError, match="unknown option 'max_cost'") as refused:
        AskOptions().with_(max_cost=1.0)
    assert refused.value.param == "max_cost"


def test_structured_output_options_become_the_request_grammar(tmp_path):
    from dinet.client._request import build_request, chat_messages

    settings = ClientSettings(home=tmp_path, mdns=False)
    messages = chat_messages("Describe a person.")
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    by_schema, _ = build_request(messages, {"json_schema": schema}, settings)
    assert by_schema.grammar is not None and "age" in by_schema.grammar
    as_json, _ = build_request(messages, {"json": True, "max_tokens": 8}, settings)
    assert as_json.grammar is not None and "object" in as_json.grammar
    own, _ = build_request(messages, {"grammar": 'root ::= "yes" | "no"'}, settings)
    assert own.grammar == 'root ::= "yes" | "no"'
    assert build_request(messages, {"json": False}, settings)[0].grammar is None
    with pytest.raises(RequestError) as both:
        build_request(messages, {"json": True, "json_schema": schema}, settings)
    assert both.value.param == "json_schema"
    with pytest.raises(RequestError) as bad:
        build_request(messages, {"json_schema": {"type": "object", "$ref": "#/nowhere"}}, settings)
    assert bad.value.param == "json_schema"


def test_sampling_controls_are_generation_options(tmp_path):
    from dinet.client._request import build_request, chat_messages

    settings = ClientSettings(home=tmp_path, mdns=False)
    options = {"presence_penalty": 0.5, "min_p": 0.1, "logit_bias": {9: 2.0, 3: -1.0}, "verify_rate": 1.0}
    params, asking = build_request(chat_messages("Hi"), options, settings)
    assert (params.presence_penalty, params.min_p, params.logit_bias) == (0.5, 0.1, ((3, -1.0), (9, 2.0)))
    assert asking.verify_rate == 1.0
    with pytest.raises(RequestError) as refused:
        build_request(chat_messages("Hi"), {"frequency_penalty": 3.0}, settings)
    assert refused.value.param == "frequency_penalty"

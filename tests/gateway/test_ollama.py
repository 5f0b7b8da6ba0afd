"""The official `ollama` package against a real `din gateway` and the real 3-node mesh."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest
from _gateway_helpers import API_KEY

from dinet.errors import RequestError
from dinet.gateway._ollama import parse_request

MODEL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"temperature": 0, "num_predict": 12}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture
def ollama_client(gateway) -> ollama.Client:
    return ollama.Client(host=gateway.url, headers=AUTH, timeout=120)


def test_chat_streamed_and_not_gives_the_greedy_text_of_the_openai_api(ollama_client, client):
    whole = ollama_client.chat(model=MODEL, messages=HELLO, options=GREEDY)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant" and (whole.message.content or "").strip()
    assert 0 < (whole.eval_count or 0) <= 12 and (whole.prompt_eval_count or 0) > 0
    assert all(isinstance(getattr(whole, name), int) for name in DURATIONS)

    parts = list(ollama_client.chat(model=MODEL, messages=HELLO, options=GREEDY, stream=True))
    assert len(parts) > 2, "the answer should arrive in several lines"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert (parts[-1].done_reason, parts[-1].eval_count) == (whole.done_reason, whole.eval_count)

    openai = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    assert openai.choices[0].message.content == whole.message.content


def test_generate_formats_the_prompt_with_the_chat_template_unless_raw(ollama_client, client):
    prompt = "The capital of France is"
    raw = ollama_client.generate(
        model=MODEL, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 8}
    )
    assert "Paris" in (raw.response or "")
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    assert raw.response == completion.choices[0].text
    streamed = ollama_client.generate(
        model=MODEL, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 8}, stream=True
    )
    assert "".join(p.response or "" for p in streamed) == raw.response

    system = "Answer in one short line."
    templated = ollama_client.generate(model=MODEL, prompt=HELLO[0]["content"], system=system, options=GREEDY)
    chat = ollama_client.chat(
        model=MODEL, messages=[{"role": "system", "content": system}, *HELLO], options=GREEDY
    )
    assert templated.response and templated.response == chat.message.content


def test_streaming_is_the_default_in_ndjson_lines(gateway, mesh):
    peers = {n.peer_id for n in mesh.nodes}
    body = {"model": MODEL, "messages": HELLO, "options": GREEDY}  # no `stream`: Ollama streams
    with httpx.stream("POST", f"{gateway.url}/api/chat", json=body, headers=AUTH, timeout=120) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("application/x-ndjson")
        assert reply.headers["x-dinet-peer"] in peers
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    last = lines[-1]
    assert last["model"] == MODEL and last["message"] == {"role": "assistant", "content": ""}
    assert set(DURATIONS) <= last.keys() and last["eval_count"] > 0
    assert last["dinet"]["peer_id"] in peers


def test_seeded_sampling_is_reproducible_and_options_that_change_nothing_are_accepted(ollama_client):
    context = ollama_client.show(MODEL).modelinfo["dinet.context_length"]  # type: ignore[index]
    sampled = {"temperature": 0.9, "top_p": 0.95, "seed": 1234, "num_predict": 12}
    # Ollama's way to turn off what dinet's sampler lacks, and options that only say how to run.
    neutral = {"top_k": 0, "repeat_last_n": 0, "num_ctx": context, "num_thread": 1}
    first = ollama_client.chat(model=MODEL, messages=HELLO, options={**sampled, **neutral}, keep_alive="5m")
    again = ollama_client.chat(model=MODEL, messages=HELLO, options=sampled)
    assert first.message.content and first.message.content == again.message.content


def test_models_are_those_the_network_offers(ollama_client, client, gateway, mesh):
    offered = client.models.retrieve(MODEL).model_extra or {}
    listed = [m for m in ollama_client.list().models if m.model != "all-minilm-l6-v2"]  # it embeds
    assert [m.model for m in listed] == [MODEL]
    assert listed[0].digest in {n.model_hash for n in mesh.nodes}
    assert listed[0].details and listed[0].details.quantization_level == offered["quantization"]

    shown = ollama_client.show(f"{MODEL}:latest")  # the tag Ollama's clients add
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo and shown.modelinfo["dinet.context_length"] == offered["context"]
    assert [m.model for m in ollama_client.ps().models] == ["all-minilm-l6-v2", MODEL]  # one embeds
    assert ollama_client.pull(MODEL).status == "success"
    assert [p.status for p in ollama_client.pull(MODEL, stream=True)][-1] == "success"

    loaded = ollama_client.generate(model=MODEL)  # no prompt: Ollama's way to load a model
    assert loaded.done and loaded.done_reason == "load" and loaded.response == ""
    assert httpx.get(f"{gateway.url}/api/version", headers=AUTH).json()["version"]
    assert httpx.head(f"{gateway.url}/").status_code == 200  # Ollama's CLI probes the server so
    assert "<html" in httpx.get(f"{gateway.url}/").text.lower()  # and `/` is still the page


def test_what_dinet_cannot_do_is_refused_naming_the_field(ollama_client):
    def chat(**kwargs):
        return ollama_client.chat(model=MODEL, messages=HELLO, **kwargs)

    tool = {"type": "function", "function": {"name": "now", "description": "the time"}}
    refusals = [
        (lambda: chat(options={"top_k": 40}), "options.top_k"),
        (lambda: chat(options={"mirostat": 2}), "options.mirostat"),
        (lambda: chat(options={"temperature": 5}), "options.temperature"),
        (lambda: chat(format={"$ref": "#/nowhere"}), "format"),  # a schema with no grammar
        (lambda: chat(options={"repeat_last_n": 128}), "options.repeat_last_n"),
        (lambda: chat(options={"min_p": 1.5}), "options.min_p"),
        (lambda: chat(tools=[tool]), "tools"),  # the model's template declares no tool support
        (lambda: chat(think=True), "think"),
        (lambda: list(chat(format={"$ref": "#/nowhere"}, stream=True)), "format"),
        (lambda: ollama_client.generate(model=MODEL, prompt="x", images=["aGVsbG8="]), "images"),
        (lambda: ollama_client.generate(model=MODEL, prompt="x", template="{{ .Prompt }}"), "template"),
    ]
    for call, field in refusals:
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 400, field
        assert field in refused.value.error


def test_errors_have_ollamas_shape_and_status(ollama_client, gateway):
    with pytest.raises(ollama.ResponseError) as unknown:
        ollama_client.chat(model="no-such-model", messages=HELLO)
    assert unknown.value.status_code == 404 and "no-such-model" in unknown.value.error
    for call in (lambda: ollama_client.show("no-such-model"), lambda: ollama_client.pull("no-such-model")):
        with pytest.raises(ollama.ResponseError) as missing:
            call()
        assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as embed:
        ollama_client.embed(model=MODEL, input="hello")
    assert embed.value.status_code == 400 and "embeddings" in embed.value.error
    wrong = ollama.Client(host=gateway.url, headers={"Authorization": "Bearer wrong"})
    with pytest.raises(ollama.ResponseError) as unauthorized:
        wrong.list()
    assert unauthorized.value.status_code == 401 and "API key" in unauthorized.value.error


def test_requests_translate_to_generation_params_with_ollamas_defaults():
    models = [{"id": MODEL, "model_hashes": ["ab12"], "context": 2048}]

    def parse(kind, **body):
        return parse_request(kind, {"model": MODEL, **body}, models, 512)

    chat = parse("chat", messages=HELLO, options={"stop": "\n", "num_predict": -1})
    assert chat.stream and chat.params is not None
    assert (chat.params.temperature, chat.params.top_p, chat.params.max_tokens) == (0.8, 0.9, 512)
    assert chat.params.stop == ("\n",)
    assert chat.params.seed != parse("chat", messages=HELLO).params.seed  # a fresh seed each time
    generate = parse("generate", prompt="Hi", system="Be brief.", stream=False, options={"seed": 7})
    assert not generate.stream and generate.params is not None and generate.params.seed == 7
    assert [(m.role, m.content) for m in generate.params.messages or ()] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    raw = parse("generate", prompt="Hi", raw=True)
    assert raw.params is not None and raw.params.prompt == "Hi" and raw.params.messages is None
    assert parse_request("chat", {"model": f"{MODEL}:latest", "messages": HELLO}, models, 512).model == MODEL
    assert parse("generate").params is None  # nothing to generate: load the model

    refused = [
        ({"prompt": "Hi", "raw": True, "system": "x"}, "system"),
        ({"prompt": "Hi", "options": {"num_ctx": 4096}}, "options.num_ctx"),
        ({"prompt": "Hi", "options": {"num_predict": 0}}, "options.num_predict"),
        ({"prompt": "Hi", "options": {"num_predict": 5000}}, "options.num_predict"),
        ({"prompt": "Hi", "options": {"vocab_only": True}}, "options.vocab_only"),
        ({"prompt": "Hi", "suffix": "end"}, "suffix"),
        ({"prompt": "Hi", "context": [1, 2]}, "context"),
    ]
    for body, field in refused:
        with pytest.raises(RequestError) as error:
            parse("generate", **body)
        assert error.value.param == field
    with pytest.raises(RequestError) as unknown_role:
        parse("chat", messages=[{"role": "function", "content": "42"}])
    assert unknown_role.value.param == "messages[0].role"


def test_format_and_penalties_are_kept_to(ollama_client):
    colours = ["red", "green", "blue"]
    schema = {"type": "object", "properties": {"colour": {"enum": colours}}, "required": ["colour"]}
    shaped = ollama_client.chat(model=MODEL, messages=HELLO, format=schema, options={"temperature": 0})
    assert json.loads(shaped.message.content)["colour"] in colours
    as_json = ollama_client.generate(
        model=MODEL, prompt="Name a colour.", format="json", options={"num_predict": 12}
    )
    assert as_json.response.lstrip().startswith("{")
    greedy = {"temperature": 0, "num_predict": 16}
    free = ollama_client.chat(model=MODEL, messages=HELLO, options=greedy)
    penalised = ollama_client.chat(
        model=MODEL, messages=HELLO, options={**greedy, "repeat_penalty": 1.5, "frequency_penalty": 1.5}
    )
    assert penalised.message.content != free.message.content

"""Ollama's model endpoints over the network's models (NetworkView.models()): /api/tags,
/api/show, /api/ps, /api/pull, /api/version (its embedding endpoints: _embeddings).

The gateway stores no model: the models are those the peers offer now. Fields dinet does
not know (a model's size, family, parameter count, when it was made) are empty or zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from starlette.responses import JSONResponse, Response

from dinet.errors import ModelNotFound, RequestError
from dinet.gateway._ollama import NDJSON, find_model, ndjson_line

Models = Sequence[Mapping[str, object]]

# The Ollama release whose API the gateway follows; clients compare it with the version a
# feature needs.
OLLAMA_VERSION = "0.12.0"
UNKNOWN_TIME = "1970-01-01T00:00:00Z"  # as /v1/models' `created: 0`


def tags(models: Models) -> dict[str, object]:
    return {"models": [_listed(m) for m in models]}


def running(models: Models) -> dict[str, object]:
    """/api/ps: every model some peer holds loaded now, for as long as peers serve it."""
    return {
        "models": [
            {**_listed(m), "expires_at": None, "size_vram": 0, "context_length": m["context"]} for m in models
        ]
    }


def show(models: Models, body: object) -> dict[str, object]:
    entry = _find(models, _named(body))
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "license": "",
        "details": _details(entry),
        "model_info": {
            "dinet.context_length": entry["context"],
            "dinet.peers": entry["peers"],
            "dinet.model_hashes": entry["model_hashes"],
        },
        "capabilities": _capabilities(entry),
        "modified_at": UNKNOWN_TIME,
    }


def pull(models: Models, body: object) -> Response:
    """Nothing to download: a model the network offers is ready; one it does not is a 404."""
    entry = _find(models, _named(body))
    done = {"status": "success"}
    if isinstance(body, dict) and body.get("stream") is False:
        return JSONResponse(done)
    ready = {"status": f"{entry['id']} is served by {entry['peers']} peers of the network"}
    return Response(ndjson_line(ready) + ndjson_line(done), media_type=NDJSON)


def version() -> dict[str, object]:
    return {"version": OLLAMA_VERSION}


def _named(body: object) -> str:
    """The model a request names: `model`, or `name` as older clients send."""
    if isinstance(body, dict):
        name = body.get("model") or body.get("name")
        if isinstance(name, str) and name:
            return name
    raise RequestError("model: name a model", "model")


def _find(models: Models, name: str) -> Mapping[str, object]:
    entry = find_model(name, models)
    if entry is None:
        raise ModelNotFound(f"no peer offers model {name!r}")
    return entry


def _listed(entry: Mapping[str, object]) -> dict[str, object]:
    hashes = entry["model_hashes"]
    return {
        "name": entry["id"],
        "model": entry["id"],
        "modified_at": UNKNOWN_TIME,
        "size": 0,
        # a model id served in several versions lists its first; all are in /api/show
        "digest": hashes[0] if isinstance(hashes, list) and hashes else "",
        "details": _details(entry),
    }


def _capabilities(entry: Mapping[str, object]) -> list[str]:
    """What Ollama's clients may ask of the model: "embedding", or "completion" and, when
    some version's chat template declares tool support, "tools" (as Ollama names them)."""
    if entry.get("task") == "embed":
        return ["embedding"]
    return ["completion", "tools"] if entry.get("tools") else ["completion"]


def _details(entry: Mapping[str, object]) -> dict[str, object]:
    return {
        "parent_model": "",
        "format": "gguf",  # every dinet engine loads GGUF files
        "family": "",
        "families": [],
        "parameter_size": "",
        "quantization_level": entry["quantization"],
    }

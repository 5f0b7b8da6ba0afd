"""The chunk store in a node's home: one directory per model version, named by its hash.

    HOME/models/<model hash>/card.json       the signed model card (`manifest.json` in
                                             homes from before the rename: still read)
    HOME/models/<model hash>/model.gguf      the file, once every chunk is verified
    HOME/models/<model hash>/model.gguf.part a file being pulled (sparse; chunks land in place)
    HOME/models/<model hash>/layers.json     a stage's pull: the blocks and chunks held in the
                                             partial file (`din model pull --layers`)

A partial file needs no journal: resuming re-hashes its chunks and keeps those
that match, so whatever a killed pull wrote and verified is never fetched again.
All methods here block (file I/O, hashing): call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from dinet.errors import ModelCardError, ModelCorrupted, ModelNotFound
from dinet.models.card import build_card, chunk_offsets, verify_model_card
from dinet.models.hashing import file_sha256, model_hash
from dinet.wire.chunks import ModelCard, SignedModelCard
from dinet.wire.ids import ModelHash
from dinet.wire.keys import SigningKey

CARD_FILE = "card.json"
OLD_CARD_FILE = "manifest.json"  # what homes made before the rename call it
MODEL_FILE = "model.gguf"
PART_FILE = "model.gguf.part"
LAYERS_FILE = "layers.json"
_HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredModel:
    card: ModelCard
    signed: SignedModelCard
    directory: Path
    layers: tuple[int, int] | None = None  # blocks [start, stop) held by a partial file
    held: tuple[int, ...] = ()  # the chunks it holds, checked, for those blocks

    @property
    def model_hash(self) -> ModelHash:
        return self.card.model_hash

    @property
    def path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def part_path(self) -> Path:
        return self.directory / PART_FILE

    @property
    def complete(self) -> bool:
        return self.path.is_file()

    @property
    def readable_path(self) -> Path:
        """The file to read the model from: the whole one, else a stage's partial one."""
        return self.path if self.complete else self.part_path

    def holds(self, start: int, stop: int) -> bool:
        """Whether the blocks [start, stop) can be served from this store."""
        return self.complete or (
            self.layers is not None and self.layers[0] <= start and stop <= self.layers[1]
        )

    def kept_chunks(self) -> list[int]:
        """The chunks on disk to keep checked: all of a whole file, or those a stage holds."""
        return list(range(len(self.card.chunk_sizes))) if self.complete else list(self.held)


class ModelStore:
    def __init__(self, home: Path) -> None:
        self.root = home / "models"

    def _dir(self, model_hash: ModelHash) -> Path:
        if not _HASH.match(model_hash):
            raise ModelNotFound(f"not a model hash: {model_hash!r}")
        return self.root / model_hash

    def get(self, model_hash: ModelHash) -> StoredModel | None:
        directory = self._dir(model_hash)
        path = _card_path(directory)
        try:
            signed = SignedModelCard.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ModelCorrupted(f"unreadable model card {path}: {exc}") from None
        try:
            card = verify_model_card(signed, model_hash)
        except ModelCardError as exc:
            raise ModelCorrupted(f"bad model card {path}: {exc}") from None
        return _with_layers(StoredModel(card, signed, directory))

    def models(self) -> list[StoredModel]:
        if not self.root.is_dir():
            return []
        found = [self.get(ModelHash(d.name)) for d in sorted(self.root.iterdir()) if _HASH.match(d.name)]
        return sorted((m for m in found if m), key=lambda m: (m.card.model_id, m.card.created_at))

    def find(self, ref: str, *, complete: bool = True) -> StoredModel:
        """A model by hash, hash prefix (8+ hex digits) or id (the newest version of it)."""
        models = [m for m in self.models() if m.complete or not complete]
        if _HASH.match(ref):
            hits = [m for m in models if m.model_hash == ref]
        elif re.match(r"^[0-9a-f]{8,63}$", ref) and any(m.model_hash.startswith(ref) for m in models):
            hits = [m for m in models if m.model_hash.startswith(ref)]
        else:
            hits = [m for m in models if m.card.model_id == ref][-1:]
        if len(hits) != 1:
            what = "no" if not hits else "more than one"
            raise ModelNotFound(f"{what} stored model matches {ref!r} (see `din model list`)")
        return hits[0]

    def import_file(
        self, path: Path, key: SigningKey, *, model_id: str | None = None, version: str | None = None
    ) -> StoredModel:
        """Chunk, hash and copy the GGUF at `path` into the store (a no-op if it is there)."""
        digest = model_hash(path)
        known = self.get(digest)
        if known is not None and known.complete:
            return known
        signed = build_card(path, model_id or path.stem.lower(), version or digest[:12], key)
        card = verify_model_card(signed)
        directory = self._dir(card.model_hash)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (MODEL_FILE + ".tmp")
        shutil.copyfile(path, tmp)
        if file_sha256(tmp) != card.sha256:
            tmp.unlink()
            raise ModelCorrupted(f"{path} changed while it was being imported")
        self._write_card(directory, signed)
        tmp.replace(directory / MODEL_FILE)
        (directory / PART_FILE).unlink(missing_ok=True)
        return StoredModel(card, signed, directory)

    def _write_card(self, directory: Path, signed: SignedModelCard) -> None:
        tmp = directory / (CARD_FILE + ".tmp")
        tmp.write_text(signed.model_dump_json())
        tmp.replace(directory / CARD_FILE)
        (directory / OLD_CARD_FILE).unlink(missing_ok=True)

    def begin(self, signed: SignedModelCard) -> StoredModel:
        """Make room for a model to be pulled: its model card and a sparse partial file."""
        card = verify_model_card(signed)
        directory = self._dir(card.model_hash)
        directory.mkdir(parents=True, exist_ok=True)
        if not _card_path(directory).exists():
            self._write_card(directory, signed)
        stored = self.get(card.model_hash)
        assert stored is not None
        if not stored.complete:
            with stored.part_path.open("ab") as f:
                f.truncate(card.file_size)
        return stored

    def bad_chunks(
        self, stored: StoredModel, *, partial: bool = False, among: list[int] | None = None
    ) -> list[int]:
        """Indices of chunks (of `among`, default all) whose bytes do not match the model card."""
        path = stored.part_path if partial else stored.path
        m = stored.card
        offsets = chunk_offsets(m)
        bad = []
        with path.open("rb") as f:
            for index in range(len(offsets)) if among is None else among:
                offset, size = offsets[index], m.chunk_sizes[index]
                f.seek(offset)
                if hashlib.sha256(f.read(size)).hexdigest() != m.chunk_hashes[index]:
                    bad.append(index)
        return bad

    def bad_kept_chunks(self, stored: StoredModel) -> list[int]:
        """The chunks kept on disk (`StoredModel.kept_chunks`) whose bytes do not match."""
        return self.bad_chunks(stored, partial=not stored.complete, among=stored.kept_chunks())

    def chunk_ok(self, stored: StoredModel, index: int) -> bool:
        m = stored.card
        with stored.readable_path.open("rb") as f:
            f.seek(chunk_offsets(m)[index])
            return hashlib.sha256(f.read(m.chunk_sizes[index])).hexdigest() == m.chunk_hashes[index]

    def read_chunk(self, stored: StoredModel, index: int) -> bytes:
        """Chunk `index` of a complete model, checked against its hash (ModelCorrupted if not)."""
        m = stored.card
        with stored.path.open("rb") as f:
            f.seek(chunk_offsets(m)[index])
            data = f.read(m.chunk_sizes[index])
        if hashlib.sha256(data).hexdigest() != m.chunk_hashes[index]:
            raise ModelCorrupted(f"chunk {index} of {m.model_hash[:16]}… does not match its hash")
        return data

    def seed_from_local(self, stored: StoredModel, wanted: list[int]) -> list[int]:
        """Copy chunks that other stored models already hold (an update by diff).

        Returns the indices still missing afterwards.
        """
        target = stored.card
        have: dict[str, tuple[Path, int, int]] = {}
        for other in self.models():
            if other.complete and other.model_hash != target.model_hash:
                m = other.card
                for h, offset, size in zip(m.chunk_hashes, chunk_offsets(m), m.chunk_sizes, strict=True):
                    have.setdefault(h, (other.path, offset, size))
        offsets = chunk_offsets(target)
        missing = []
        fd = os.open(stored.part_path, os.O_RDWR)
        try:
            for index in wanted:
                source = have.get(target.chunk_hashes[index])
                data = _read_at(*source) if source else b""
                if source and hashlib.sha256(data).hexdigest() == target.chunk_hashes[index]:
                    os.pwrite(fd, data, offsets[index])
                else:
                    missing.append(index)
        finally:
            os.close(fd)
        return missing

    def finish(self, stored: StoredModel) -> StoredModel:
        """Check the whole pulled file's sha256 and make it the model file."""
        if file_sha256(stored.part_path) != stored.card.sha256:
            raise ModelCorrupted(f"pulled file for {stored.model_hash[:16]}… fails its sha256")
        stored.part_path.replace(stored.path)
        (stored.directory / LAYERS_FILE).unlink(missing_ok=True)
        return replace(stored, layers=None, held=())

    def keep_layers(self, stored: StoredModel, start: int, stop: int, chunks: list[int]) -> StoredModel:
        """Record that the partial file holds blocks [start, stop): `chunks`, all checked."""
        record = {"layers": [start, stop], "chunks": sorted(chunks)}
        tmp = stored.directory / (LAYERS_FILE + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(stored.directory / LAYERS_FILE)
        return replace(stored, layers=(start, stop), held=tuple(sorted(chunks)))

    def remove(self, stored: StoredModel) -> None:
        shutil.rmtree(stored.directory)


def _with_layers(stored: StoredModel) -> StoredModel:
    """`stored` with the blocks its partial file holds, if a stage's pull recorded them."""
    if stored.complete:
        return stored
    try:
        record = json.loads((stored.directory / LAYERS_FILE).read_text())
        start, stop = (int(x) for x in record["layers"])
        held = tuple(int(i) for i in record["chunks"])
    except FileNotFoundError:
        return stored
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelCorrupted(f"unreadable {stored.directory / LAYERS_FILE}: {exc}") from None
    if not all(0 <= i < len(stored.card.chunk_sizes) for i in held):
        raise ModelCorrupted(f"{stored.directory / LAYERS_FILE} names chunks the model does not have")
    return replace(stored, layers=(start, stop), held=held)


def _card_path(directory: Path) -> Path:
    """The model card file in `directory`, under its old name if only that exists."""
    card = directory / CARD_FILE
    old = directory / OLD_CARD_FILE
    return old if not card.exists() and old.exists() else card


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)

"""The chunk store on disk: homes written before the model card had its name still work."""

from __future__ import annotations

import subprocess
import sys

from tests.models._tiny import write_tiny

from dinet.models.store import CARD_FILE, OLD_CARD_FILE, ModelStore
from dinet.wire.keys import SigningKey


def test_a_home_from_before_the_rename_keeps_its_models(tmp_path):
    home = tmp_path / "home"
    store = ModelStore(home)
    stored = store.import_file(write_tiny(tmp_path / "a.gguf"), SigningKey.generate(), model_id="tiny")
    # what an older dinet left behind: the same model card under its old file name
    (stored.directory / CARD_FILE).rename(stored.directory / OLD_CARD_FILE)

    again = ModelStore(home).find("tiny")
    assert again.model_hash == stored.model_hash and again.card == stored.card
    assert ModelStore(home).bad_chunks(again) == []
    listed = subprocess.run(
        [sys.executable, "-m", "dinet", "model", "list", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert stored.model_hash[:16] in listed.stdout


def test_storing_a_model_card_again_leaves_one_file_under_the_new_name(tmp_path):
    store = ModelStore(tmp_path)
    key = SigningKey.generate()
    stored = store.import_file(write_tiny(tmp_path / "a.gguf"), key, model_id="tiny")
    (stored.directory / CARD_FILE).rename(stored.directory / OLD_CARD_FILE)
    stored.path.unlink()  # an incomplete model is imported again

    store.import_file(write_tiny(tmp_path / "a.gguf"), key, model_id="tiny")
    assert (stored.directory / CARD_FILE).is_file()
    assert not (stored.directory / OLD_CARD_FILE).exists()
    assert store.find("tiny").model_hash == stored.model_hash

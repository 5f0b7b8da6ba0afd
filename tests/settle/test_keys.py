"""The chain key in a home: created once, mode 0600, sealed with DINET_HOME_PASSPHRASE."""

from __future__ import annotations

import stat

import pytest

from dinet.errors import ConfigError
from dinet.home_crypto import PASSPHRASE_ENV, is_sealed_file
from dinet.settle import load_or_create_chain_key


def test_a_chain_key_is_created_once_and_kept_private(tmp_path, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    key = load_or_create_chain_key(tmp_path)
    path = tmp_path / "chain.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key.private_key
    assert load_or_create_chain_key(tmp_path) == key


def test_a_chain_key_is_sealed_when_a_passphrase_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    key = load_or_create_chain_key(tmp_path)
    path = tmp_path / "chain.key"
    assert is_sealed_file(path)
    assert key.private_key not in path.read_bytes()
    assert load_or_create_chain_key(tmp_path) == key
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(ConfigError):
        load_or_create_chain_key(tmp_path)


def test_a_plaintext_chain_key_is_sealed_in_place_once_a_passphrase_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    key = load_or_create_chain_key(tmp_path)
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    assert load_or_create_chain_key(tmp_path) == key
    assert is_sealed_file(tmp_path / "chain.key")


def test_a_file_that_is_not_a_key_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    (tmp_path / "chain.key").write_bytes(b"short")
    with pytest.raises(ConfigError):
        load_or_create_chain_key(tmp_path)

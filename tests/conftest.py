"""Fixtures shared by the tests: real node processes on loopback, and clients for them."""

from __future__ import annotations

import pytest

from dinet.config import ClientSettings
from dinet.node.local_mesh import LocalMesh


@pytest.fixture(scope="session")
def mesh(tmp_path_factory):
    """Three real `din node` processes on loopback, one llama.cpp thread each."""
    with LocalMesh(tmp_path_factory.mktemp("mesh"), size=3, threads=1) as running:
        yield running


@pytest.fixture
def client_settings(tmp_path, mesh):
    return ClientSettings(home=tmp_path / "client", bootstrap=mesh.bootstrap[:1], mdns=False)

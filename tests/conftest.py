"""Fixtures shared by the tests: real node processes on loopback, and clients for them."""

from __future__ import annotations

import pytest
from tests.lab.nat import NatLab

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


@pytest.fixture
def nat_lab():
    """A fresh NAT lab (tests/lab/README.md): namespaces pub1, pub2, a1, a2 (home A), b1, b2
    (home B) around a wan router; torn down after the test, whatever happened in it."""
    with NatLab() as lab:
        yield lab

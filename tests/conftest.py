"""Fixtures shared by the tests: real node processes on loopback, and clients for them."""

from __future__ import annotations

import pytest

from dinet.config import ClientSettings
from dinet.engine import embedding_model_path
from dinet.node.local_mesh import LocalMesh

# The suite runs on two workers (pytest-xdist, `--dist loadgroup`: pyproject.toml). Each
# module stays on one worker, so its module-scoped nodes start once. These modules run
# meshes of five to 26 nodes that keep both cores busy: they share one group, so no two of
# them run at once (on a 2-core machine two such campaigns starve each other's nodes), and
# they come first, so the lighter modules fill the other worker meanwhile.
HEAVY_MODULES = {
    "tests/scale/test_many_nodes.py",
    "tests/client/test_chain.py",
    "tests/client/test_failover.py",
    "tests/client/test_stage_liars.py",
    "tests/trust/test_liars.py",
    "tests/trust/test_collusion.py",
    "tests/trust/test_liar_votes.py",
}


# First: xdist reads the groups in its own collection hook, and marks added after it are ignored.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    def heavy(item) -> bool:
        return item.nodeid.split("::")[0] in HEAVY_MODULES

    for item in items:
        item.add_marker(pytest.mark.xdist_group("heavy" if heavy(item) else item.nodeid.split("::")[0]))
    items.sort(key=lambda item: not heavy(item))  # stable: the heavy ones first, each in its order


@pytest.fixture(scope="session")
def mesh(tmp_path_factory):
    """Three real `din node` processes on loopback, one llama.cpp thread each; two of them
    also serve the embedding model (all-MiniLM-L6-v2, `--embedding-model`)."""
    mesh = LocalMesh(
        tmp_path_factory.mktemp("mesh"),
        size=3,
        threads=1,
        embedding_model=embedding_model_path(),
        embedding_nodes=2,
    )
    with mesh as running:
        yield running


@pytest.fixture
def client_settings(tmp_path, mesh):
    return ClientSettings(home=tmp_path / "client", bootstrap=mesh.bootstrap[:1], mdns=False)


@pytest.fixture
def nat_lab():
    """A fresh NAT lab (tests/lab/README.md): namespaces pub1, pub2, a1, a2 (home A), b1, b2
    (home B) around a wan router; torn down after the test, whatever happened in it."""
    # Imported here: `tests.lab` needs the repo root on sys.path (`python -m pytest` puts it
    # there, the `pytest` script does not), and tests that use no lab must not depend on it.
    from tests.lab.nat import NatLab

    with NatLab() as lab:
        yield lab


@pytest.fixture(scope="session")
def devnet():
    """A real EVM dev chain (ganache, `dinet.settle.devnet`) on loopback with the channels
    contract deployed and ten funded accounts; started by the first test that asks for it."""
    from dinet.settle.devnet import Devnet  # web3 is imported only by tests that need a chain

    with Devnet(accounts=10) as running:
        yield running

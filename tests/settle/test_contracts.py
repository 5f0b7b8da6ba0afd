"""The committed ABIs are what the committed Vyper sources compile to."""

from __future__ import annotations

import json

import pytest
import vyper

from dinet.settle._contracts import SOURCES, abi, bytecode


@pytest.mark.parametrize("name", ["channels", "test_token"])
def test_the_committed_abi_matches_the_source(name):
    source = (SOURCES / f"{name}.vy").read_text()
    compiled = vyper.compile_code(source, contract_path=f"{name}.vy", output_formats=["abi", "bytecode"])
    assert json.loads(json.dumps(compiled["abi"])) == abi(name)
    assert bytecode(name) == compiled["bytecode"]

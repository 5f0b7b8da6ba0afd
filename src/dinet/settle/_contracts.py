"""The contracts' ABIs (committed beside this file) and bytecode (compiled from
`contracts/*.vy`, which ships in this package).

`make run`/`make test` compile the bytecode at set-up with the vyper CLI into
`<venv>/share/dinet/contracts/` (NAME.bin, next to a copy of the NAME.vy it came from).
When that copy is missing or differs from the source installed here (a `pip install`
without make, or an edited contract) the source is compiled with vyper's Python API and
written there, if the folder is writable.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

from dinet.home_crypto import write_atomically

logger = logging.getLogger(__name__)

SOURCES = Path(__file__).parent / "contracts"
COMPILED = Path(sys.prefix) / "share" / "dinet" / "contracts"


@functools.cache
def abi(name: str) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads((Path(__file__).parent / f"{name}.abi.json").read_text())
    return loaded


@functools.cache
def bytecode(name: str) -> str:
    """The deployable bytecode of contracts/NAME.vy, 0x hex."""
    source = (SOURCES / f"{name}.vy").read_bytes()
    compiled, copy = COMPILED / f"{name}.bin", COMPILED / f"{name}.vy"
    if compiled.is_file() and copy.is_file() and copy.read_bytes() == source:
        return compiled.read_text().strip()
    code = compile_source(name, source)
    try:
        write_atomically(compiled, code.encode() + b"\n", durable=False)
        write_atomically(copy, source, durable=False)
    except OSError as exc:
        logger.info("compiled %s.vy but cannot keep it in %s: %s", name, COMPILED, exc)
    return code


def compile_source(name: str, source: bytes) -> str:
    import vyper  # imported here: only needed when the set-up did not compile the contract

    logger.info("compiling %s.vy with vyper %s", name, vyper.__version__)
    out = vyper.compile_code(source.decode(), contract_path=f"{name}.vy", output_formats=["bytecode"])
    code: str = out["bytecode"]
    return code

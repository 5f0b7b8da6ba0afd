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
import os
import sys
from pathlib import Path
from typing import Any

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
        _write(compiled, code.encode() + b"\n")
        _write(copy, source)  # last: a copy that matches means the bytecode beside it does
    except OSError as exc:
        logger.info("compiled %s.vy but cannot keep it in %s: %s", name, COMPILED, exc)
    return code


def compile_source(name: str, source: bytes) -> str:
    import vyper  # imported here: only needed when the set-up did not compile the contract

    logger.info("compiling %s.vy with vyper %s", name, vyper.__version__)
    out = vyper.compile_code(source.decode(), contract_path=f"{name}.vy", output_formats=["bytecode"])
    code: str = out["bytecode"]
    return code


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

"""The execution sandbox around engine workers, for any kind of worker.

    argv = sandboxed([sys.executable, "-m", "my.worker", ...], readable=[model], protect=[model])
    process = await trio.lowlevel.open_process(argv, env=launcher_env(), ...)
    ...  # in the worker: status = current_status()  (what took effect, for its ready frame)

Two sides: the owner of a worker wraps its command line (`_wrap`: `sandboxed`,
`launcher_env`, `SandboxStatus`); the launcher (`python -m dinet.engine.sandbox._launcher`,
standard library only) confines itself with namespaces, resource limits and the
Landlock and seccomp filters of `_lsm`, then becomes the worker.

Names are imported on first use: the launcher runs before every worker and imports this
package, so it must not pay for pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dinet.engine.sandbox._wrap import (
        UNSANDBOXED,
        SandboxStatus,
        current_status,
        launcher_env,
        sandboxed,
        warn_once,
    )

_PUBLIC = {
    "UNSANDBOXED": "dinet.engine.sandbox._wrap",
    "SandboxStatus": "dinet.engine.sandbox._wrap",
    "current_status": "dinet.engine.sandbox._wrap",
    "launcher_env": "dinet.engine.sandbox._wrap",
    "sandboxed": "dinet.engine.sandbox._wrap",
    "warn_once": "dinet.engine.sandbox._wrap",
}

__all__ = ["UNSANDBOXED", "SandboxStatus", "current_status", "launcher_env", "sandboxed", "warn_once"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dinet.engine.sandbox' has no attribute {name!r}")

"""selfsup: train, evaluate and compare self-supervised representation learners.

The Python API (imported on first use, so ``import selfsup`` stays fast):
``selfsup.build_config``, ``selfsup.train``, ``selfsup.load_run``, ``selfsup.resume`` (returning a
:class:`selfsup.api.Run` with ``.encoder``, ``.config``, ``.embed()``, ``.evaluate()``,
``.export()``), and ``selfsup.load_encoder`` for exported encoders. See "Use selfsup from Python"
in the README.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Run": "selfsup.api",
    "build_config": "selfsup.api",
    "load_run": "selfsup.api",
    "resume": "selfsup.api",
    "train": "selfsup.api",
    "FrozenEncoder": "selfsup.export",
    "export_encoder": "selfsup.export",
    "load_encoder": "selfsup.export",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

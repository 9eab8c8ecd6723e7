"""Method registry: each method module registers its class with :func:`register`.

``METHODS[name]`` is the :class:`~selfsup.methods.base.Method` subclass for a method name.
"""

from __future__ import annotations

import importlib
import pkgutil

from selfsup.errors import ConfigError
from selfsup.methods.base import Method

METHODS: dict[str, type[Method]] = {}

_SKIP = {"base"}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def _load_all() -> None:
    """Import every module of this package once: each method file registers itself."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _SKIP and not info.name.startswith("_"):
            importlib.import_module(f"selfsup.methods.{info.name}")


def method_class(name: str) -> type[Method]:
    """The registered class for ``name``; unknown names raise ConfigError listing valid ones."""
    _load_all()
    if name not in METHODS:
        raise ConfigError(
            f"Unknown method {name!r}. Available methods: {', '.join(sorted(METHODS))}."
        )
    return METHODS[name]


def method_names() -> list[str]:
    _load_all()
    return sorted(METHODS)

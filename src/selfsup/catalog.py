"""What the command line offers, known without importing torch: the methods and datasets of the
registries with one-line descriptions, every config key, and the installed presets.

The registries (:mod:`selfsup.methods`, :mod:`selfsup.data`, the config dataclasses) import torch
and Lightning, which takes seconds; the command line must report a mistyped flag at once. So
:func:`catalog` reads their contents from a small JSON cache, ``$SELFSUP_CACHE_DIR`` (default
``~/.cache/selfsup``) ``/cli-catalog-<fingerprint>.json``, where the fingerprint covers the
version and every source file of the package: a changed or added file rebuilds it (by
:func:`collect`, which imports the registries) on the next command that needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from selfsup.errors import ConfigError

PACKAGE_DIR = Path(__file__).parent
PRESET_DIR = PACKAGE_DIR / "configs"
_SUFFIX_SUMMARY = " on the shared joint-embedding pipeline."


# ------------------------------------------------------------------------------------ presets
def preset_names() -> list[str]:
    """The installed run presets as ``METHOD/NAME`` (``configs/METHOD/NAME.yaml``)."""
    return sorted(
        f"{path.parent.name}/{path.stem}"
        for path in PRESET_DIR.glob("*/*.yaml")
        if path.parent.name != "compare"
    )


def preset_file(name: str, method: str | None = None) -> Path:
    """The installed preset ``name``: ``METHOD/NAME`` (``vicreg/cifar10-solo``), or ``NAME``
    for ``method``; a trailing ``.yaml`` and a leading ``configs/`` are accepted too.

    A preset of another method than ``method`` is an error.
    """
    key = str(name).strip().removesuffix(".yaml").removeprefix("configs/")
    if "/" not in key and method:
        key = f"{method}/{key}"
    path = PRESET_DIR / f"{key}.yaml"
    if key not in preset_names() or not path.is_file():
        ours = [p for p in preset_names() if method is None or p.startswith(f"{method}/")]
        raise ConfigError(
            f"No installed preset {name!r}. The presets are installed in {PRESET_DIR}; "
            f"{'those of ' + method if method else 'they'} are: {', '.join(ours) or 'none'}. "
            "Use --config FILE for a YAML file of your own."
        )
    owner = key.split("/", 1)[0]
    if method and owner != method:
        raise ConfigError(
            f"Preset {key} is a preset of {owner}, not of {method}. Presets of {method}: "
            f"{', '.join(p for p in preset_names() if p.startswith(method + '/')) or 'none'}."
        )
    return path


# ------------------------------------------------------------------------------------ catalog
def collect() -> dict[str, Any]:
    """The catalog from the registries themselves (imports torch and every method)."""
    import dataclasses
    import sys

    from selfsup.config import SECTIONS
    from selfsup.data import list_datasets
    from selfsup.methods import METHODS, method_names

    def defaults(cls: type) -> list[list[str]]:
        out = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = None
            out.append([f.name, str(value)])
        return out

    methods = {}
    for name in method_names():
        cls = METHODS[name]
        doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip()
        summary = doc.splitlines()[0].removesuffix(_SUFFIX_SUMMARY).rstrip(".") if doc else ""
        methods[name] = {
            "summary": summary,
            "generative": bool(cls.generative),
            "options": defaults(cls.config_class),
        }
    datasets = {row["name"]: str(row.get("description", "")) for row in list_datasets()}
    sections = {section: [f.name for f in dataclasses.fields(cls)]
                for section, cls in SECTIONS.items()}
    return {"methods": methods, "datasets": datasets, "sections": sections}


def fingerprint() -> str:
    """A hash of the version and of every source file's name, size and modification time."""
    from selfsup import __version__

    digest = hashlib.sha1(f"{__version__}|{PACKAGE_DIR.resolve()}".encode())
    for root, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(root, name))
                digest.update(f"{root}/{name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """``$SELFSUP_CACHE_DIR``, else ``~/.cache/selfsup``."""
    return Path(os.environ.get("SELFSUP_CACHE_DIR") or Path.home() / ".cache" / "selfsup")


_CATALOG: dict[str, Any] | None = None


def catalog() -> dict[str, Any]:
    """The catalog, from the cache when it matches the installed sources, else collected (and
    cached; an unwritable cache only costs time)."""
    global _CATALOG
    if _CATALOG is not None:
        return _CATALOG
    path = cache_root() / f"cli-catalog-{fingerprint()}.json"
    try:
        content = json.loads(path.read_text())
        if {"methods", "datasets", "sections"} <= set(content):
            _CATALOG = content
            return content
    except (OSError, ValueError):
        pass
    content = collect()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                         suffix=".tmp") as fh:
            json.dump(content, fh)
        os.replace(fh.name, path)
    except OSError:
        pass
    _CATALOG = content
    return content


def method_names() -> list[str]:
    return sorted(catalog()["methods"])


def dataset_names() -> list[str]:
    return sorted(catalog()["datasets"])


def option_names(method: str) -> set[str]:
    """Every key a ``--flag`` of ``selfsup train METHOD`` may name (model and section keys)."""
    info = catalog()
    keys = {name for name, _ in info["methods"].get(method, {}).get("options", [])}
    for fields in info["sections"].values():
        keys.update(fields)
    return keys | {"seed"}

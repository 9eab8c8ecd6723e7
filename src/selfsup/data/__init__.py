"""Dataset registry: look up, load, check and list the datasets selfsup knows.

Every dataset is described by a :class:`~selfsup.data.base.DatasetSpec` registered with
:func:`register`. ``spec.folder`` is relative to the data directory; ``spec.extra`` may hold
``split_files`` ({split: files needed}), ``gz_ok`` (a ``name.gz`` counts as ``name``),
``split_sizes`` (official sample counts), ``combined_splits`` ({split: parts}), ``options``
(allowed dataset options and their defaults) and ``check`` (a cheap ``(data_dir, split) -> n``
validator used instead of a full load by :func:`check_dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.data import celeba, cifar, digits, dsprites, imagefolder, mnist, mpi3d, stl10
from selfsup.data.base import AnyDataset, DatasetSpec, ImageDataset, StreamingDataset
from selfsup.data.splits import holdout_split, stratified_holdout_split
from selfsup.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "AnyDataset",
    "DatasetSpec",
    "ImageDataset",
    "StreamingDataset",
    "check_dataset",
    "dataset_spec",
    "holdout_split",
    "list_datasets",
    "load_dataset",
    "register",
    "stratified_holdout_split",
]

DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec, replace: bool = False) -> DatasetSpec:
    """Add ``spec`` to :data:`DATASETS` under ``spec.name`` (a duplicate name is an error)."""
    if spec.name in DATASETS and not replace and DATASETS[spec.name] is not spec:
        raise ValueError(f"a dataset named {spec.name!r} is already registered")
    DATASETS[spec.name] = spec
    return spec


for _spec in (
    digits.SPEC,
    mnist.make_spec("mnist"),
    mnist.make_spec("fashionmnist"),
    cifar.SPEC,
    stl10.SPEC,
    imagefolder.SPEC,
    celeba.SPEC,
    dsprites.SPEC,
    dsprites.PROCEDURAL_SPEC,
    *mpi3d.SPECS,
):
    register(_spec)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec registered as ``name`` (case-insensitive); unknown names raise ConfigError."""
    key = str(name).strip()
    if key not in DATASETS:
        key = key.lower()
    if key not in DATASETS:
        raise ConfigError(
            f"Unknown dataset {name!r}. Valid names are: {', '.join(sorted(DATASETS))}. Run "
            "`selfsup data list` to see what each one is."
        )
    return DATASETS[key]


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise ConfigError(
            f"Dataset {spec.name!r} has no split {split!r}. Valid splits are: "
            f"{', '.join(spec.splits)}."
        )


def _check_options(spec: DatasetSpec, options: dict | None) -> dict:
    options = dict(options or {})
    allowed = spec.extra.get("options")
    if allowed is not None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            valid = ", ".join(f"{k} (default {v!r})" for k, v in allowed.items()) or "none"
            raise ConfigError(
                f"Unknown option(s) {unknown} for dataset {spec.name!r}. Valid options: {valid}."
            )
    return options


def _folder(spec: DatasetSpec, data_dir: Path, options: dict) -> Path:
    if spec.name == "imagefolder":
        return data_dir / options.get("root", spec.folder)
    return data_dir / spec.folder


def _locate(spec: DatasetSpec, folder: Path, fname: str) -> Path:
    """The path holding ``fname`` (``fname.gz`` where allowed and only that exists)."""
    path = folder / fname
    if spec.extra.get("gz_ok") and not path.is_file():
        gz = folder / f"{fname}.gz"
        if gz.is_file():
            return gz
    return path


def _missing_files(spec: DatasetSpec, data_dir: Path, split: str) -> list[str]:
    needed = spec.extra.get("split_files", {}).get(split, ())
    folder = data_dir / spec.folder
    return [f for f in needed if not _locate(spec, folder, f).is_file()]


def _missing_error(spec: DatasetSpec, data_dir: Path, missing: list[str]) -> DataError:
    folder = data_dir / spec.folder
    suffix = " (plain or .gz)" if spec.extra.get("gz_ok") else ""
    how = (
        "Pass --download (download=True in Python) to fetch them, or copy the standard files "
        "there by hand"
        if spec.download is not None
        else "There is no downloader for this dataset; create the files by hand"
    )
    return DataError(
        f"Dataset {spec.name!r}: missing file(s) {', '.join(missing)}{suffix} in the folder "
        f"{folder} (expected {', '.join(str(folder / f) for f in missing)}). {how}, then run "
        f"`selfsup data check {spec.name} --data-dir {data_dir}` to verify them."
    )


def _download(spec: DatasetSpec, data_dir: Path) -> None:
    assert spec.download is not None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        spec.download(data_dir)
    except DataError:
        raise
    except Exception as exc:  # network, disk and checksum failures all mean the same to a user
        raise DataError(
            f"Downloading {spec.name!r} into {data_dir} failed ({type(exc).__name__}: {exc}). "
            f"Check the internet connection and free disk space, or fetch the files by hand and "
            f"place them in {data_dir / spec.folder} ({', '.join(spec.files)}); then run "
            f"`selfsup data check {spec.name} --data-dir {data_dir}`."
        ) from None


def load_dataset(
    name: str,
    data_dir: str | Path,
    split: str,
    options: dict | None = None,
    download: bool = False,
) -> ImageDataset | StreamingDataset:
    """Load ``split`` of dataset ``name`` from ``data_dir``.

    Missing files raise :class:`DataError` naming them, unless ``download`` is set and the dataset
    has a downloader, in which case they are fetched first (failures raise DataError too).
    """
    spec = dataset_spec(name)
    _check_split(spec, split)
    options = _check_options(spec, options)
    data_dir = Path(data_dir).expanduser()
    missing = _missing_files(spec, data_dir, split)
    if missing and download and spec.download is not None:
        _download(spec, data_dir)
        missing = _missing_files(spec, data_dir, split)
    if missing:
        raise _missing_error(spec, data_dir, missing)
    return spec.load(data_dir, split, options)


def _file_report(spec: DatasetSpec, data_dir: Path, options: dict) -> list[dict[str, Any]]:
    folder = _folder(spec, data_dir, options)
    if spec.name == "imagefolder":
        report = []
        for split in spec.splits:
            sub = imagefolder.split_folder(folder, split)
            present = sub.is_dir()
            size = None
            if present:
                size = imagefolder.folder_bytes(sub)
            report.append({"path": str(sub), "present": present, "bytes": size})
        return report
    report = []
    for fname in spec.files:
        path = _locate(spec, folder, fname)
        present = path.is_file()
        report.append(
            {
                "path": str(path),
                "present": present,
                "bytes": path.stat().st_size if present else None,
            }
        )
    return report


def _count_split(spec: DatasetSpec, data_dir: Path, split: str, options: dict) -> int:
    if spec.name == "imagefolder":  # opens every file: a non-image is named, not "valid"
        return imagefolder.check_split(data_dir, split, options)
    checker = spec.extra.get("check")
    if checker is not None:
        return int(checker(data_dir, split))
    ds = load_dataset(spec.name, data_dir, split, options)
    if not isinstance(ds, ImageDataset) and len(ds) > 0:
        ds[0]  # decode one image so unreadable files are noticed
    return len(ds)


def check_dataset(name: str, data_dir: str | Path, options: dict | None = None) -> dict[str, Any]:
    """Validate dataset ``name`` in ``data_dir`` by loading every split; never raises for data.

    Returns a JSON-serialisable dict ``{"name", "folder", "files": [{"path", "present",
    "bytes"}], "valid", "message", "splits": {split: n_samples}}``. Only an unknown dataset name
    or invalid options raise (ConfigError).
    """
    spec = dataset_spec(name)
    options = _check_options(spec, options)
    data_dir = Path(data_dir).expanduser()
    embedded = bool(spec.extra.get("embedded"))
    folder = spec.folder if embedded else str(_folder(spec, data_dir, options))
    try:
        files = [] if embedded else _file_report(spec, data_dir, options)
    except OSError as exc:
        files = []
        problems = [f"cannot list the files ({exc})"]
    else:
        problems = []
    combined = spec.extra.get("combined_splits", {})
    splits: dict[str, int] = {}
    notes: list[str] = []
    all_missing: list[str] = []
    for split in spec.splits:
        all_missing += [f for f in _missing_files(spec, data_dir, split) if f not in all_missing]
    if all_missing:
        problems.append(str(_missing_error(spec, data_dir, all_missing)))
    optional = spec.extra.get("optional_splits", ())
    present = spec.extra.get("split_present")
    for split in spec.splits:
        if split in combined or _missing_files(spec, data_dir, split):
            continue
        if split in optional and present is not None and not present(data_dir, split, options):
            notes.append(
                f"no {split} split was found: training works without it, but evaluation "
                f"(`selfsup eval`, `selfsup compare`, the online probe's {split} accuracy) needs it"
            )
            continue
        try:
            splits[split] = _count_split(spec, data_dir, split, options)
        except DataError as exc:
            problems.append(f"split {split!r}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a check must report, not crash
            problems.append(f"split {split!r}: unexpected {type(exc).__name__}: {exc}")
    for split, parts in combined.items():
        if all(p in splits for p in parts):
            splits[split] = sum(splits[p] for p in parts)
    official = spec.extra.get("split_sizes", {})
    for split, n in splits.items():
        if split in official and official[split] != n:
            notes.append(
                f"{split} has {n} samples where the official dataset has {official[split]}"
            )
    valid = not problems and all(s in splits for s in spec.splits if s not in optional)
    if valid:
        sizes = ", ".join(f"{s}: {n}" for s, n in splits.items())
        message = f"{spec.name}: OK, every split loads ({sizes})."
        if notes:
            message += " Note: " + "; ".join(notes) + "."
    else:
        message = f"{spec.name}: NOT usable. " + " ".join(problems)
    return {
        "name": spec.name,
        "folder": folder,
        "files": files,
        "valid": valid,
        "message": message,
        "splits": splits,
    }


def list_datasets() -> list[dict[str, Any]]:
    """One JSON-serialisable dict per registered dataset, sorted by name."""
    out = []
    for name in sorted(DATASETS):
        spec = DATASETS[name]
        out.append(
            {
                "name": spec.name,
                "description": spec.description,
                "folder": spec.folder,
                "splits": list(spec.splits),
                "image_shape": None if spec.image_shape is None else list(spec.image_shape),
                "num_classes": spec.num_classes or None,
                "download": spec.download is not None,
                "in_memory": spec.in_memory,
                "notes": spec.notes,
            }
        )
    return out

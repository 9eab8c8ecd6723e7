"""The run folder: its layout, and every read and write of it.

::

    RUN_DIR/
      config.yaml              the resolved configuration (rewritten when a resume changes it)
      checkpoints/last.ckpt    the latest checkpoint
      checkpoints/epoch=NNNN.ckpt   the newest trainer.keep_checkpoints periodic checkpoints
      metrics.csv              every logged term, all training sessions
      tensorboard/             the same for TensorBoard, plus the figures
      images/                  figures (loss curves, probe curve, embedding, samples, ...)
      training.json            one entry per training session, and the config changes of resumes
      eval/<name>.json         saved evaluations (eval/factors.json: the factor probes)

Every other module asks :class:`RunFolder` for these paths and lets it read and write them, so the
layout lives here once. Checkpoints are read by :func:`load_checkpoint`, which never unpickles
anything but tensors and plain values (see "Security" in the README).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import pickletools
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError, RunError

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
PERIODIC = "epoch={epoch:04d}"  # Lightning ModelCheckpoint filename template (".ckpt" added)
PERIODIC_GLOB = "epoch=*.ckpt"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
IMAGE_DIR = "images"
TRAINING_FILE = "training.json"
EVAL_DIR = "eval"
#: Files earlier versions wrote beside ``eval/``: old name -> evaluation name.
LEGACY_EVAL_FILES = {"eval_factors.json": "factors"}
#: Everything a training session may create in a run folder (removed again after a failed start).
RUN_ENTRIES = (CONFIG_FILE, CHECKPOINT_DIR, METRICS_FILE, TENSORBOARD_DIR, IMAGE_DIR,
               TRAINING_FILE, "hparams.yaml")


# -------------------------------------------------------------------------------- checkpoints
#: The only globals a selfsup checkpoint may reference: tensor reconstruction, tensor storages
#: and OrderedDict (state dicts). Everything else in a checkpoint is a plain pickled value (dict,
#: list, tuple, str, int, float, bool, None), which unpickles without calling anything.
_STORAGES = (
    "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
    "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
    "ComplexFloatStorage", "ComplexDoubleStorage", "UntypedStorage",
)
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        *(("torch", name) for name in _STORAGES),
    }
)
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}
_IGNORED_OPS = {"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"}


class UnsafeCheckpointError(RunError):
    """A checkpoint that references code (a function or class outside the allow-list)."""


def _pickle_globals(data: bytes) -> list[str]:
    """Every global (``module.name``) a pickle stream references, read without unpickling it.

    ``GLOBAL``/``INST`` carry the name; ``STACK_GLOBAL`` takes it from the two strings pushed just
    before (anything else is reported as unresolvable, which the caller refuses).
    """
    found: list[str] = []
    recent: list[Any] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            if len(recent) >= 2 and all(isinstance(v, str) for v in recent[-2:]):
                found.append(f"{recent[-2]}.{recent[-1]}")
            else:
                found.append("<a global whose name is computed at load time>")
        elif op.name in ("EXT1", "EXT2", "EXT4"):
            found.append(f"<copyreg extension {arg}>")
        if op.name in _STRING_OPS:
            recent.append(arg)
        elif op.name not in _IGNORED_OPS:
            recent.append(None)
        del recent[:-2]
    return found


def check_checkpoint_safe(path: Path) -> None:
    """Refuse a checkpoint whose pickle references anything outside :data:`ALLOWED_GLOBALS`.

    Only reads bytes: nothing in the file is unpickled or executed here.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith(".pkl")]
            if not pickles:
                raise zipfile.BadZipFile("no data.pkl")
            streams = [archive.read(name) for name in pickles]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise RunError(
            f"Checkpoint {path} is corrupt or truncated, or not a PyTorch checkpoint "
            f"({type(exc).__name__}: {exc}). Use an earlier checkpoint from the same folder "
            "(selfsup keeps periodic ones in checkpoints/) or retrain."
        ) from None
    for data in streams:
        try:
            names = _pickle_globals(data)
        except Exception as exc:  # noqa: BLE001 - an unparsable pickle is a corrupt file
            raise RunError(
                f"Checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}). Use an "
                "earlier checkpoint from checkpoints/ or retrain."
            ) from None
        bad = sorted({n for n in names if tuple(n.rsplit(".", 1)) not in ALLOWED_GLOBALS})
        if bad:
            raise UnsafeCheckpointError(
                f"Checkpoint {path} was not loaded: it references {', '.join(bad[:5])}, which a "
                "selfsup checkpoint never holds (only tensors, numbers, strings, lists and dicts). "
                "Unpickling such a reference can run arbitrary code, so nothing in the file was "
                "read or executed. Use checkpoints written by selfsup from a source you trust; if "
                "you wrote this file yourself, save only tensors and plain values in it."
            )


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A selfsup checkpoint, read without unpickling arbitrary objects.

    The pickle is first scanned for the globals it references (:func:`check_checkpoint_safe`), then
    loaded by ``torch.load(weights_only=True)``. Tensors are mapped to ``map_location`` (the CPU by
    default), so a run trained on a GPU loads on a machine without one.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise RunError(f"Checkpoint {path} does not exist. Train first, or check the run folder.")
    check_checkpoint_safe(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means a corrupt file
        raise RunError(
            f"Checkpoint {path} is corrupt or truncated and cannot be read ({type(exc).__name__}). "
            "Use an earlier checkpoint from the same folder (selfsup keeps periodic ones in "
            "checkpoints/) or retrain."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RunError(f"{path} is not a selfsup checkpoint (no model weights in it).")
    return checkpoint


def save_atomically(write: Any, path: Path) -> None:
    """``write(handle)`` into a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder: a crash at any moment leaves the old file or the new one, complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _write_json(path: Path, content: Any) -> Path:
    text = json.dumps(content, indent=2, default=str).encode()
    save_atomically(lambda handle: handle.write(text), path)
    return path


def eval_name(probe: str, options: dict[str, Any] | None = None) -> str:
    """File stem of an evaluation: the probe, plus the linear protocol when not L-BFGS."""
    protocol = (options or {}).get("protocol", "lbfgs")
    return f"{probe}-{protocol}" if probe == "linear" and protocol != "lbfgs" else probe


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -------------------------------------------------------------------------------- the folder
class RunFolder:
    """One run folder: where each file lives, and reading and writing them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -------------------------------------------------------------------------------- paths
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / LAST

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def image_dir(self) -> Path:
        return self.path / IMAGE_DIR

    @property
    def training_file(self) -> Path:
        return self.path / TRAINING_FILE

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def eval_file(self, name: str) -> Path:
        return self.eval_dir / f"{name}.json"

    def periodic_checkpoints(self) -> list[Path]:
        """The periodic checkpoints, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(self.checkpoint_dir.glob(PERIODIC_GLOB))

    # -------------------------------------------------------------------------------- state
    def is_run(self) -> bool:
        """The folder holds a run configuration."""
        return self.config_file.is_file()

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file() or bool(self.periodic_checkpoints())

    def is_failed_start(self) -> bool:
        """A run that stopped before its first checkpoint (nothing to resume)."""
        return self.is_run() and not self.has_checkpoint()

    def foreign_entries(self) -> list[str]:
        """Names in the folder that are not a run's: everything, when there is no run config
        (a ``metrics.csv`` of the user's is not ours to overwrite)."""
        if not self.path.is_dir():
            return []
        known = set(RUN_ENTRIES) | {EVAL_DIR, *LEGACY_EVAL_FILES} if self.is_run() else set()
        return sorted(p.name for p in self.path.iterdir() if p.name not in known)

    def check_writable(self, purpose: str, advice: str) -> None:
        """RunError naming ``purpose`` when nothing can be written into the folder."""
        probe = self.path / f".selfsup-write-test-{os.getpid()}"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"0" * 1024)
            probe.unlink()
        except OSError as exc:
            raise RunError(
                f"Cannot write into {self.path} ({exc.strerror or exc}), but {purpose}. "
                f"{advice}"
            ) from None

    # ------------------------------------------------------------------------------- config
    def read_config_dict(self) -> dict[str, Any]:
        """``config.yaml`` as a plain dict (YAML ``safe_load``: no objects are built)."""
        if not self.is_run():
            raise RunError(
                f"{self.path} is not a selfsup run folder ({CONFIG_FILE} is missing). Pass the "
                "folder that `selfsup train --out` or `selfsup compare` wrote."
            )
        try:
            content = yaml.safe_load(self.config_file.read_text()) or {}
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
            raise RunError(
                f"{self.config_file} cannot be read as YAML ({exc}); the run folder is damaged."
            ) from None
        if not isinstance(content, dict):
            raise RunError(f"{self.config_file} is not a mapping of keys; the run folder is "
                           "damaged.")
        return content

    def load_config(self) -> Any:
        """The run's :class:`~selfsup.config.RunConfig`, validated."""
        from selfsup.config import config_from_dict
        from selfsup.methods import method_class

        content = self.read_config_dict()
        method = content.get("method")
        if not isinstance(method, str):
            raise RunError(f"{self.config_file} has no `method:` entry; it is not a selfsup run "
                           "config.")
        try:
            return config_from_dict(content, method_class(method).config_class,
                                    str(self.config_file))
        except ConfigError as exc:
            raise RunError(f"The run config {self.config_file} is invalid: {exc}") from None

    def save_config(self, config: Any) -> Path:
        text = yaml.safe_dump(config.to_dict(), sort_keys=False).encode()
        save_atomically(lambda handle: handle.write(text), self.config_file)
        return self.config_file

    # ----------------------------------------------------------------------- training.json
    def read_training(self) -> dict[str, Any]:
        """``training.json`` (``{"sessions": [...], ...}``); empty when missing or damaged."""
        try:
            content = json.loads(self.training_file.read_text())
        except (OSError, ValueError):
            return {"sessions": []}
        if not isinstance(content, dict) or not isinstance(content.get("sessions"), list):
            return {"sessions": []}
        return content

    def record_session(self, result: Any, error: str | None = None) -> Path:
        """Append one training session (wall seconds, steps, samples/s, how it ended)."""
        content = self.read_training()
        session = {
            "seconds": round(float(result.seconds), 3),
            "global_step": int(result.global_step),
            "start_step": int(getattr(result, "start_step", 0)),
            "epochs": int(result.epochs),
            "samples": int(getattr(result, "samples", 0)),
            "samples_per_second": round(float(result.samples_per_second), 1),
            "interrupted": bool(result.interrupted),
            "finished": _now(),
        }
        if getattr(result, "aborted", False):
            session["aborted"] = True
        if error:
            session["error"] = error
        content["sessions"].append(session)
        content["seconds"] = round(sum(float(s.get("seconds", 0)) for s in content["sessions"]), 3)
        content["global_step"] = session["global_step"]
        content["epochs"] = session["epochs"]
        return _write_json(self.training_file, content)

    def record_config_change(self, changes: dict[str, dict[str, Any]]) -> Path:
        """Append ``{key: {"from": old, "to": new}}`` applied by a resume to the config history."""
        content = self.read_training()
        content.setdefault("config_history", []).append({"time": _now(), "changes": changes})
        return _write_json(self.training_file, content)

    def last_session_error(self) -> str | None:
        """The error that ended the last session, if it failed."""
        sessions = self.read_training()["sessions"]
        return sessions[-1].get("error") if sessions else None

    # -------------------------------------------------------------------------- evaluations
    def save_evaluation(self, name: str, result: dict[str, Any]) -> Path:
        """Write ``result`` to ``eval/<name>.json`` (replacing an earlier one)."""
        return _write_json(self.eval_file(name), result)

    def check_eval_writable(self) -> None:
        """Before computing an evaluation: can its result be saved? (A folder that does not
        exist is left to the code that loads the run, which names the problem.)"""
        if not self.path.is_dir():
            return
        folder = RunFolder(self.eval_dir) if self.eval_dir.is_dir() else self
        folder.check_writable(
            f"the evaluation is saved in {self.eval_dir} (read by `selfsup report`)",
            "Nothing was computed. Make the run folder writable, or copy it "
            f"(`cp -r {self.path} COPY`) and evaluate the copy.",
        )

    def read_evaluations(self) -> dict[str, dict[str, Any]]:
        """Every saved evaluation by name (``eval/*.json``, and the files of older versions)."""
        found: dict[str, Path] = {}
        for old, name in LEGACY_EVAL_FILES.items():
            if (self.path / old).is_file():
                found[name] = self.path / old
        if self.eval_dir.is_dir():
            found.update({p.stem: p for p in sorted(self.eval_dir.glob("*.json"))})
        out: dict[str, dict[str, Any]] = {}
        for name, path in sorted(found.items()):
            try:
                content = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(content, dict):
                out[name] = content
        return out

    # ------------------------------------------------------------------------------ metrics
    def truncate_metrics(self, step: int) -> int:
        """Drop ``metrics.csv`` rows logged at ``step`` or later (a resumed session logs them
        again); returns how many rows were dropped."""
        path = self.metrics_file
        if not path.is_file():
            return 0
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(kept) == len(rows):
            return 0
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        data = buffer.getvalue().encode()
        save_atomically(lambda handle: handle.write(data), path)
        return len(rows) - len(kept)

    # --------------------------------------------------------------------------- new runs
    def prepare_new(self) -> str | None:
        """Make the folder ready for a new run; returns a note for the user, or None.

        Refuses a folder that holds a run with a checkpoint (resume it instead) or files that are
        not a run's (nothing of the user's is overwritten). A failed start (a config without any
        checkpoint) is cleared and reused.
        """
        note = None
        if self.is_run() and self.has_checkpoint():
            raise RunError(
                f"{self.path} already holds a run. Continue it with `selfsup train --resume "
                f"{self.path}`, or choose a new folder with --out."
            )
        foreign = self.foreign_entries()
        if self.is_failed_start() and not foreign:
            self.remove_run_files()
            note = (f"{self.path} held a run that stopped before its first checkpoint; its files "
                    "were replaced by this run.")
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise RunError(
                f"{self.path} already exists and holds files that are not a selfsup run "
                f"({shown}). Nothing was written there; choose a new or empty folder with --out."
            )
        return note

    def remove_run_files(self, remove_folder: bool = False) -> None:
        """Delete what a training session writes (after a failed start), and the folder itself
        when ``remove_folder`` and nothing else is left in it."""
        for name in (*RUN_ENTRIES, EVAL_DIR):
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        if remove_folder:
            try:
                self.path.rmdir()
            except OSError:
                pass


def save_evaluation(run_dir: str | Path, name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` to ``RUN_DIR/eval/<name>.json`` (replacing an earlier one)."""
    return RunFolder(run_dir).save_evaluation(name, result)


def record_training(run_dir: str | Path, result: Any) -> Path:
    """Append one training session to ``RUN_DIR/training.json``."""
    return RunFolder(run_dir).record_session(result)

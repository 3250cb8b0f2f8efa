"""Crash-safe file writes: write to a temporary file (or folder) beside the target, then
rename (atomic on POSIX), so a killed job or a full disk never leaves a half-written
result behind, and the previous version stays until the new one is complete."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Seconds to wait between writing a temporary file and renaming it into place: 0 except
# under fault injection, which needs kills to land inside writes (tests/faults.py).
SLOW_WRITES = float(os.environ.get("ID3PM_FAULT_SLOW_WRITES", "0") or 0)


class DiskFullError(OSError):
    """A write ran out of space. Its message is one line naming what was being written;
    what was there before is intact, so a rerun with space continues."""


def is_disk_full(e: BaseException) -> bool:
    # safetensors writes from Rust and raises its own error type, naming the OS error
    # (and a DiskFullError from a file written inside a complete_folder block)
    return isinstance(e, DiskFullError) or getattr(e, "errno", None) == errno.ENOSPC or "os error 28" in str(e)


@contextmanager
def complete_folder(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Yield FOLDER.tmp to write into; when the block ends, swap it in for FOLDER. A crash
    or a full disk inside the block leaves FOLDER as it was (a full disk raises
    DiskFullError). A crash between the two renames leaves FOLDER.old complete
    (id3pm.checkpoint.find_checkpoint looks there)."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
    except Exception as e:
        if not is_disk_full(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # give back the space the partial write took
        raise DiskFullError(f"{folder}: no space left on device while writing {what}; the previous one is intact") from None
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    try:
        _atomic_write_bytes(path, data)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(f"{path}: no space left on device; the file was not changed") from None
        raise


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if SLOW_WRITES:  # fault injection (tests/faults.py): widen the window a kill can land in
            time.sleep(SLOW_WRITES)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n").encode())


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)

"""Crash-safe file writes: write to a temporary file in the same folder, then rename
(atomic on POSIX), so a killed job never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

# Seconds to wait between writing a temporary file and renaming it into place: 0 except
# under fault injection, which needs kills to land inside writes (tests/faults.py).
SLOW_WRITES = float(os.environ.get("ID3PM_FAULT_SLOW_WRITES", "0") or 0)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
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

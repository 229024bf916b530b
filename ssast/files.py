"""Writing files so that a reader sees the old content or the new one, never a part.

Every file the toolkit writes (checkpoints, embeddings, tables, run records, downloads) goes
through :func:`atomic_write`: written to a temporary file in the target's folder, flushed, then
renamed over the target. The temporary file is made by :func:`tempfile.mkstemp`, which creates
it readable by its owner only (mode 0600); the final file gets the mode a plain ``open`` would
have given it (0666 less the umask), so checkpoints and tables are as shareable as any other
file the user writes.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

_umask_lock = threading.Lock()


def default_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 without the process's umask bits."""
    with _umask_lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], Any], *,
                 durable: bool = False) -> Path:
    """Write ``data`` (bytes, text, or a function writing to a binary file) to ``path`` atomically.

    ``durable``: also fsync the file and its folder, so that the rename survives a power cut
    (for the run records a resume depends on).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON of ``obj``: a value that is not a finite number (an undefined metric) is ``null``,
    never the ``NaN`` of Python's json module, which JSON readers refuse."""
    return json.dumps(_finite(obj), indent=indent, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_save(obj: Any, path: str | os.PathLike, *, durable: bool = False) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f), durable=durable)

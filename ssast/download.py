"""Downloads into the model cache: resumable, atomic and verified.

Files go to ``$SSAST_PRETRAINED_DIR`` (default ``~/.cache/ssast``). A download is written to
``<file>.part`` beside its target and renamed to the final name only once it is complete and
verified, so a file under its final name is always whole. An interrupted download resumes where
it stopped (an HTTP ``Range`` request for the missing bytes) the next time it is asked for.
Concurrent downloads of one file (several ranks of a job) wait for each other through a lock
file beside it.

Verification: the size, where the release states it, and always the structure: the file must
load with ``torch.load(weights_only=True)`` and be an SSAST/AST checkpoint. A file that fails
is removed, and the error says so.

``$SSAST_MIRROR`` (e.g. ``https://host/models/``) replaces the release addresses: every file is
fetched as ``$SSAST_MIRROR/<file name>``, for machines behind a proxy or where the release's
file host is blocked. urllib also honours the usual ``https_proxy``/``http_proxy`` variables.
"""
from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from filelock import FileLock
from tqdm import tqdm

from .checkpoint import CheckpointError, read_checkpoint

CACHE_ENV = "SSAST_PRETRAINED_DIR"
MIRROR_ENV = "SSAST_MIRROR"
TIMEOUT_S = 60  # seconds without data before a connection counts as lost
_CHUNK = 1 << 20
_RETRIES = 3  # further attempts after a connection broke off mid-file (each resumes)


class DownloadError(FileNotFoundError):
    """A file could not be fetched; the message says which file to put where by hand."""


def cache_dir() -> Path:
    """The model cache: ``$SSAST_PRETRAINED_DIR``, default ``~/.cache/ssast``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ssast")


def mirror_url(file_name: str) -> str | None:
    """``$SSAST_MIRROR/<file name>`` when a mirror is set, else None."""
    base = os.environ.get(MIRROR_ENV, "").strip()
    if not base:
        return None
    return f"{base.rstrip('/')}/{urllib.parse.quote(file_name)}"


def source_url(url: str, file_name: str) -> str:
    """Where to fetch a release file from: the mirror when one is set, else ``url``."""
    return mirror_url(file_name) or url


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is an SSAST/AST checkpoint."""
    read_checkpoint(path)


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    verify: Callable[[Path], object] | None = verify_checkpoint,
    progress: bool = True,
) -> Path:
    """Return ``dest``, first downloading ``url`` to it if it is not there.

    ``size``: the expected number of bytes (checked when given). ``verify(path)`` checks the
    complete download before it is renamed to ``dest`` and raises :class:`CheckpointError` to
    refuse it (default: it must be an SSAST/AST checkpoint; None skips the check). A refused
    file is removed. Network failures raise :class:`DownloadError` (a ``FileNotFoundError``)
    naming the file and where to put it; a partial download is kept and resumed next time.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with FileLock(str(dest.with_name(f".{dest.name}.lock"))):
        if dest.is_file():  # another process finished it while this one waited
            return dest
        try:
            _fetch(url, part, size, progress, dest.name)
        except _SizeMismatch as e:
            _remove(part)
            raise CheckpointError(dest, f"{e}; the download was removed") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            kept = part.is_file() and part.stat().st_size > 0
            if not kept:
                _remove(part)
            raise DownloadError(_offline_message(url, dest, e, part if kept else None)) from None
        _verify(part, dest, size, verify)
        os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------- transfer
class _SizeMismatch(Exception):
    pass


class _Incomplete(OSError):
    pass


def _fetch(url: str, part: Path, size: int | None, progress: bool, label: str) -> None:
    """Download ``url`` into ``part``, resuming what is there; retry while a try makes progress."""
    for attempt in range(_RETRIES + 1):
        before = part.stat().st_size if part.is_file() else 0
        try:
            _transfer(url, part, size, progress, label)
            return
        except (_Incomplete, TimeoutError, ConnectionError, http.client.IncompleteRead) as e:
            after = part.stat().st_size if part.is_file() else 0
            if after <= before or attempt == _RETRIES:
                raise OSError(f"the connection broke off after {after} bytes ({e})") from None
            time.sleep(min(2 ** attempt, 10))


def _transfer(url: str, part: Path, size: int | None, progress: bool, label: str) -> None:
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        _remove(part)
        have = 0
    req = urllib.request.Request(url, headers={"User-Agent": "ssast"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch, or the part file is not a prefix
            total = _range_total(e.headers.get("Content-Range"))
            if total == have:
                return
            _remove(part)
            return _transfer(url, part, size, progress, label)
        raise
    with resp:
        start = 0
        if have and getattr(resp, "status", None) == 206:
            start = _range_start(resp.headers.get("Content-Range"))
        if start != have:  # the server sent the whole file (no ranges): start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if size is not None and total is not None and total != size:
            raise _SizeMismatch(f"the server offers {total} bytes, the release is {size} bytes")
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
            disable=not progress, leave=False,
        ) as bar:
            while chunk := resp.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Incomplete(f"received {got} of {total} bytes")


def _range_start(header: str | None) -> int:
    m = re.match(r"bytes\s+(\d+)-", header or "")
    return int(m.group(1)) if m else -1


def _range_total(header: str | None) -> int | None:
    m = re.search(r"/(\d+)\s*$", header or "")
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------- checks
def _verify(part: Path, dest: Path, size: int | None, verify: Callable[[Path], object] | None) -> None:
    got = part.stat().st_size
    if size is not None and got != size:
        _remove(part)
        raise CheckpointError(dest, f"size mismatch: downloaded {got} bytes, the release is {size} bytes; "
                                    "the download was removed")
    if verify is None:
        return
    try:
        verify(part)
    except CheckpointError as e:
        _remove(part)
        raise CheckpointError(dest, f"the downloaded file was refused and removed: {e.problem}") from None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _offline_message(url: str, dest: Path, err: BaseException, part: Path | None) -> str:
    reason = getattr(err, "reason", None) or err
    if isinstance(err, urllib.error.HTTPError):
        reason = f"HTTP {err.code} {err.reason}"
    msg = (f"{dest.name} is not in the cache and could not be downloaded from {url} ({reason}). "
           f"Download it on a machine with internet access and put it at {dest} (or set {CACHE_ENV} "
           f"to the folder that holds it); behind a proxy or a blocked file host, set {MIRROR_ENV} "
           f"to a server that has it (fetched as ${MIRROR_ENV}/{dest.name}).")
    if part is not None:
        msg += f" The partial download {part} is kept and resumes on the next try."
    return msg

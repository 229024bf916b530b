"""Safe extraction of zip and tar archives (including .tar.gz, .tgz, .tar.bz2, .tar.xz).

No member may write outside the target folder. A member is refused, with an
:class:`ArchiveError` naming the archive and the member, when its name is absolute or contains
``..``, when it would land outside the target through a symlink already on disk, when it is a
symlink or hard link pointing outside the target, or when it is a device or other special file.
Tar members are checked one by one just before each is written (so that symlinks created by
earlier members are taken into account) and extracted with :mod:`tarfile`'s ``"data"`` filter
where this Python has it, as a second line of defence. Zip members are all checked before any is
written.
"""
from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

# tarfile extraction filters exist from Python 3.12 and in security releases of 3.8-3.11.
_HAS_TAR_FILTER = hasattr(tarfile, "data_filter")
_FILTER_ERRORS = (tarfile.FilterError,) if _HAS_TAR_FILTER else ()


class ArchiveError(ValueError):
    """An archive that cannot be extracted safely or at all; names the archive and the member."""

    def __init__(self, archive, member: str | None, problem: str):
        self.archive, self.member, self.problem = str(archive), member, problem
        where = f"{archive}" + (f": member {member!r}" if member is not None else "")
        super().__init__(f"{where}: {problem}")


def _name_problem(name: str) -> str | None:
    """Why a member name is unsafe on its own (before looking at the disk), or None."""
    if not name:
        return "empty member name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path refused"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' in the path refused (it could write outside the target folder)"
    return None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _tar_member_problem(m: tarfile.TarInfo, dest: str) -> str | None:
    """Why extracting ``m`` into the (real, absolute) folder ``dest`` is unsafe, or None."""
    problem = _name_problem(m.name)
    if problem:
        return problem
    if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
        return "device, FIFO or other special file refused"
    # realpath follows symlinks already extracted, so a path through one of them is caught.
    target = os.path.realpath(os.path.join(dest, m.name))
    if not _inside(target, dest):
        return "would be written outside the target folder (through a symlink)"
    if m.issym():
        if m.linkname.startswith(("/", "\\")):
            return f"symlink to an absolute path refused (-> {m.linkname})"
        linked = os.path.realpath(os.path.join(dest, os.path.dirname(m.name), m.linkname))
        if not _inside(linked, dest):
            return f"symlink pointing outside the target folder refused (-> {m.linkname})"
    if m.islnk():
        if m.linkname.startswith(("/", "\\")):
            return f"hard link to an absolute path refused (-> {m.linkname})"
        # Hard-link targets are named from the archive root, not from the link's folder.
        linked = os.path.realpath(os.path.join(dest, m.linkname))
        if not _inside(linked, dest):
            return f"hard link pointing outside the target folder refused (-> {m.linkname})"
    return None


def safe_extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Extract a tar archive (any compression tarfile reads) into ``dest``; the member count."""
    dest_real = os.path.realpath(dest)
    os.makedirs(dest_real, exist_ok=True)
    count = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            def checked():
                nonlocal count
                for m in tar:  # lazily: each member is checked after the previous one is on disk
                    problem = _tar_member_problem(m, dest_real)
                    if problem:
                        raise ArchiveError(archive, m.name, problem)
                    count += 1
                    yield m

            kwargs = {"filter": "data"} if _HAS_TAR_FILTER else {}
            try:
                tar.extractall(dest_real, members=checked(), **kwargs)
            except _FILTER_ERRORS as e:  # what the data filter refuses beyond our checks
                member = getattr(e, "tarinfo", None)
                raise ArchiveError(archive, member.name if member else None, str(e)) from None
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ArchiveError(archive, None, f"cannot read tar archive ({e})") from None
    return count


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_extract_zip(archive: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Extract a zip archive into ``dest`` after checking every member; the member count."""
    dest_real = os.path.realpath(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(archive, None, f"cannot read zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            problem = _name_problem(info.filename)
            if problem is None and _zip_is_symlink(info):
                link = zf.read(info).decode("utf-8", "replace")
                if link.startswith(("/", "\\")):
                    problem = f"symlink to an absolute path refused (-> {link})"
                else:
                    linked = os.path.normpath(os.path.join(dest_real, os.path.dirname(info.filename), link))
                    if not _inside(linked, dest_real):
                        problem = f"symlink pointing outside the target folder refused (-> {link})"
            if problem:
                raise ArchiveError(archive, info.filename, problem)
        os.makedirs(dest_real, exist_ok=True)
        for info in infos:
            # Checked at write time too: a symlink already in the target could redirect the member.
            target = os.path.realpath(os.path.join(dest_real, info.filename))
            if not _inside(target, dest_real):
                raise ArchiveError(archive, info.filename,
                                   "would be written outside the target folder (through a symlink)")
            try:
                zf.extract(info, dest_real)  # zipfile writes zip symlinks as small regular files
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise ArchiveError(archive, info.filename, f"cannot extract ({e})") from None
    return len(infos)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Extract a zip or tar archive (chosen by content, not by name) into ``dest``; member count."""
    path = Path(archive)
    if not path.is_file():
        raise ArchiveError(archive, None, "no such archive file")
    if zipfile.is_zipfile(path):
        return safe_extract_zip(path, dest)
    if tarfile.is_tarfile(path):
        return safe_extract_tar(path, dest)
    raise ArchiveError(archive, None, "not a zip or tar archive (or a truncated download)")

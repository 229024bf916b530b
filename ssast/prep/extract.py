"""Safe extraction of zip and tar archives (including .tar.gz, .tgz, .tar.bz2, .tar.xz).

No member can write outside the target folder, by construction rather than by checking path
strings: the target folder is opened once, and every member is created relative to that
directory descriptor, one path component at a time (``os.mkdir``/``os.open``/``os.symlink``/
``os.link`` with ``dir_fd``, folders opened with ``O_DIRECTORY | O_NOFOLLOW``, files created with
``O_EXCL | O_NOFOLLOW``). The kernel never follows a symlink for us: when a path goes through a
symlink (one extracted earlier or one already in the target), its target is read and walked
here, component by component, and a ``..`` above the target folder or an absolute target is
refused. No path string is ever built from the archive's names, so the length of a path (the
PATH_MAX overflow that defeats ``os.path.realpath``, CPython CVE-2025-4517) plays no part.

A member is refused, with an :class:`ArchiveError` naming the archive and the member, when
- its name is absolute or contains ``..``;
- it would be written through a symlink that leads outside the target folder;
- it is a symlink whose target is absolute or resolves outside the target folder, resolved
  against what is on disk when it is created and again once the whole archive is extracted
  (a link created before the link it goes through is found then, and removed);
- it is a hard link to something outside the target folder, or to anything but a regular file;
- it is a device, FIFO or other special file.
Zip member names are all checked before anything is written; zip symlink entries (Unix zips)
become symlinks, under the same rules. Files keep their permission bits without setuid, setgid,
sticky or group/other write; folders stay writable by their owner; ownership is not restored.
"""
from __future__ import annotations

import collections
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# Symlinks followed in one path before giving up: Linux's MAXSYMLINKS, so a chain the kernel
# would refuse to follow (ELOOP) is also refused, or accepted as unusable, here.
_MAX_LINK_HOPS = 40
# Folders open at once while walking one path (one descriptor each).
_MAX_DEPTH = 256
_MAX_LINK_TARGET = 4096  # bytes of a zip symlink entry (a path, PATH_MAX at most)
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError,
                NotImplementedError, RuntimeError)


class ArchiveError(ValueError):
    """An archive that cannot be extracted safely or at all; names the archive and the member."""

    def __init__(self, archive, member: str | None, problem: str):
        self.archive, self.member, self.problem = str(archive), member, problem
        where = f"{archive}" + (f": member {member!r}" if member is not None else "")
        super().__init__(f"{where}: {problem}")


class _Refused(Exception):
    """A member that cannot be extracted; ``problem`` says why (the member is added by the caller)."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


class _Escape(_Refused):
    """A walk that left the target folder (``..`` above it, or a symlink to an absolute path)."""


def _name_problem(name: str) -> str | None:
    """Why a member name is unsafe on its own (before looking at the disk), or None."""
    if not name:
        return "empty member name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path refused"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' in the path refused (it could write outside the target folder)"
    return None


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def _file_mode(mode: int) -> int:
    """Permission bits kept for a file: no setuid/setgid/sticky, no group/other write, owner rw."""
    mode = (mode & 0o755) | 0o600
    return mode if mode & 0o100 else mode & ~0o111


def _dir_mode(mode: int) -> int:
    return (mode & 0o755) | 0o700  # the owner can always create the members that follow


class _Target:
    """The target folder, opened once; all members are created relative to its descriptor."""

    def __init__(self, dest: str | os.PathLike):
        if not (os.open in os.supports_dir_fd and os.symlink in os.supports_dir_fd and _NOFOLLOW):
            raise OSError("this platform cannot create files relative to a folder descriptor")
        os.makedirs(dest, exist_ok=True)
        self.root = os.open(dest, _DIR_FLAGS)  # the target itself may be a symlink: the user chose it
        self.links: dict[tuple[int, int], str] = {}  # (device, inode) of each symlink made -> member

    def close(self) -> None:
        os.close(self.root)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ walking

    def _walk(self, parts: list[str], *, final: str, create: bool = False,
              lenient: bool = False) -> tuple[list[int], str | None]:
        """Follow ``parts`` from the root, one component at a time, symlinks expanded here.

        Returns the stack of folder descriptors reached (the root first; the caller closes all
        but the root with :meth:`_release`) and the last name:
        - ``final="parent"``: the last component is returned unlooked-at, in ``stack[-1]``;
        - ``final="entry"``: symlinks in the last component are followed too; the name returned
          is a non-folder or missing entry in ``stack[-1]``, or None when the path is a folder;
        - ``final="dir"``: every component must be a folder (made when ``create``).
        Missing folders are made when ``create``; otherwise a missing or non-folder component
        raises, unless ``lenient``, where the rest of the path is taken as written (only to see
        whether it leaves the target). Leaving the target raises :class:`_Escape`.
        """
        stack = [self.root]
        todo = collections.deque(parts)
        hops = 0
        beyond = 0  # lenient: components past one that does not exist (or is not a folder)
        try:
            while todo:
                c = todo.popleft()
                last = not todo
                if c in ("", "."):
                    continue
                if c == "..":
                    if beyond:
                        beyond -= 1
                    elif len(stack) == 1:
                        raise _Escape("'..' above the target folder")
                    else:
                        os.close(stack.pop())
                    continue
                if beyond:
                    beyond += 1
                    continue
                if last and final == "parent":
                    return stack, c
                try:
                    st = os.stat(c, dir_fd=stack[-1], follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > _MAX_LINK_HOPS:
                        if lenient:  # unusable: the kernel refuses such a chain (ELOOP) too
                            return stack, None
                        raise _Refused("too many levels of symbolic links")
                    target = os.readlink(c, dir_fd=stack[-1])
                    if target.startswith("/"):
                        raise _Escape(f"a symlink on the way points to an absolute path ({target})")
                    todo.extendleft(reversed(target.split("/")))
                    continue
                if st is None:
                    if last and final == "entry":
                        return stack, c
                    if create:
                        os.mkdir(c, 0o755, dir_fd=stack[-1])
                    elif lenient:
                        beyond = 1
                        continue
                    else:
                        raise _Refused(f"{c!r} is not there (not extracted before)")
                elif not stat.S_ISDIR(st.st_mode):
                    if last and final == "entry":
                        return stack, c
                    if lenient:
                        beyond = 1
                        continue
                    raise _Refused(f"{c!r} is not a folder")
                if len(stack) > _MAX_DEPTH:
                    raise _Refused(f"more than {_MAX_DEPTH} folders deep")
                # O_NOFOLLOW: if c was swapped for a symlink since the stat, this fails.
                stack.append(os.open(c, _DIR_FLAGS | _NOFOLLOW, dir_fd=stack[-1]))
            return stack, None
        except BaseException:
            self._release(stack)
            raise

    def _release(self, stack: list[int]) -> None:
        for fd in stack[1:]:
            os.close(fd)
        del stack[1:]

    def _escapes(self, parts: list[str]) -> bool:
        """Whether the path ``parts`` (symlinks followed as they are now) leads outside."""
        try:
            stack, _ = self._walk(parts, final="entry", lenient=True)
        except _Escape:
            return True
        self._release(stack)
        return False

    @staticmethod
    def _clear(dirfd: int, name: str) -> None:
        """Remove a non-folder entry ``name`` (a file or link from an earlier member)."""
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise _Refused("a folder of that name is already there")
        os.unlink(name, dir_fd=dirfd)

    def _parent(self, parts: list[str]) -> tuple[list[int], str]:
        if not parts:
            raise _Refused("not a file name")
        try:
            return self._walk(parts, final="parent", create=True)
        except _Escape:
            raise _Escape("would be written outside the target folder (through a symlink)") from None

    # ------------------------------------------------------------------ members

    def mkdir(self, name: str, mode: int | None) -> None:
        try:
            stack, _ = self._walk(_parts(name), final="dir", create=True)
        except _Escape:
            raise _Escape("would be written outside the target folder (through a symlink)") from None
        try:
            if mode is not None and len(stack) > 1:
                os.fchmod(stack[-1], _dir_mode(mode))
        finally:
            self._release(stack)

    def write(self, name: str, data, mode: int | None, mtime: float | None = None) -> None:
        """A regular file from the readable ``data``; ``mode`` None: the umask's default."""
        stack, last = self._parent(_parts(name))
        try:
            self._clear(stack[-1], last)  # never write into an earlier file, link or hard link
            fd = os.open(last, _NEW_FILE_FLAGS, 0o600 if mode is not None else 0o666, dir_fd=stack[-1])
        finally:
            self._release(stack)
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(data, f, 1 << 20)
            f.flush()
            if mode is not None:
                os.fchmod(fd, _file_mode(mode))
            if mtime is not None:
                os.utime(fd, (mtime, mtime))

    def symlink(self, name: str, target: str, member: str) -> None:
        if not target:
            raise _Refused("symlink with an empty target refused")
        if target.startswith(("/", "\\")) or (len(target) > 1 and target[1] == ":"):
            raise _Refused(f"symlink to an absolute path refused (-> {target})")
        parts = _parts(name)
        stack, last = self._parent(parts)
        try:
            if self._escapes(parts[:-1] + target.split("/")):
                raise _Escape(f"symlink pointing outside the target folder refused (-> {target})")
            self._clear(stack[-1], last)
            os.symlink(target, last, dir_fd=stack[-1])
            st = os.stat(last, dir_fd=stack[-1], follow_symlinks=False)
            self.links[(st.st_dev, st.st_ino)] = member
        finally:
            self._release(stack)

    def hardlink(self, name: str, target: str) -> None:
        """A hard link to the regular file ``target`` (named from the archive root, as tar does)."""
        if target.startswith(("/", "\\")) or (len(target) > 1 and target[1] == ":"):
            raise _Refused(f"hard link to an absolute path refused (-> {target})")
        try:
            src, src_name = self._walk(_parts(target), final="entry")
        except _Escape:
            raise _Escape(f"hard link pointing outside the target folder refused (-> {target})") from None
        except _Refused as e:
            raise _Refused(f"hard link target {target!r} unusable: {e.problem}") from None
        try:
            if src_name is None:
                raise _Refused(f"hard link target {target!r} is a folder, not a regular file")
            try:
                st = os.stat(src_name, dir_fd=src[-1], follow_symlinks=False)
            except FileNotFoundError:
                raise _Refused(f"hard link target {target!r} is not there (not extracted before)") from None
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(f"hard link target {target!r} is not a regular file")
            dst, last = self._parent(_parts(name))
            try:
                if os.fstat(dst[-1]).st_ino == os.fstat(src[-1]).st_ino and last == src_name:
                    return  # a link to itself: the file is already there
                self._clear(dst[-1], last)
                os.link(src_name, last, src_dir_fd=src[-1], dst_dir_fd=dst[-1], follow_symlinks=False)
            finally:
                self._release(dst)
        finally:
            self._release(src)

    def escaping_links(self) -> list[tuple[str, str]]:
        """Symlinks made here that lead outside now that everything is in place: removed, and
        returned as (member, link target). The tree is walked folder by folder from the root,
        through real folders only."""
        if not self.links:
            return []
        bad = []
        pending = [[]]
        while pending:
            parts = pending.pop()
            try:
                stack, _ = self._walk(parts, final="dir")
            except _Refused:  # deeper than anything extracted here: no link of ours in it
                continue
            try:
                with os.scandir(stack[-1]) as it:
                    entries = list(it)
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(parts + [entry.name])
                        continue
                    if not entry.is_symlink():
                        continue
                    st = entry.stat(follow_symlinks=False)
                    member = self.links.get((st.st_dev, st.st_ino))
                    if member is None:
                        continue  # a link that was there before: not this archive's
                    target = os.readlink(entry.name, dir_fd=stack[-1])
                    if self._escapes(parts + target.split("/")):
                        os.unlink(entry.name, dir_fd=stack[-1])
                        bad.append((member, target))
            finally:
                self._release(stack)
        return bad


def _open_target(archive, dest) -> _Target:
    try:
        return _Target(dest)
    except OSError as e:
        raise ArchiveError(archive, None, f"cannot create or open the target folder {dest} ({e})") from None


def _check_escaping_links(target: _Target, archive) -> None:
    bad = target.escaping_links()
    if bad:
        member, link = bad[0]
        more = f" ({len(bad) - 1} more such links removed too)" if len(bad) > 1 else ""
        raise ArchiveError(archive, member, f"symlink pointing outside the target folder refused (-> {link}): "
                                            f"it goes through a link extracted after it; removed{more}")


def _extract_tar_member(tar: tarfile.TarFile, m: tarfile.TarInfo, target: _Target) -> None:
    problem = _name_problem(m.name)
    if problem:
        raise _Refused(problem)
    if m.isdir():
        target.mkdir(m.name, m.mode)
    elif m.isreg():
        with tar.extractfile(m) as data:
            target.write(m.name, data, m.mode, m.mtime)
    elif m.issym():
        target.symlink(m.name, m.linkname, m.name)
    elif m.islnk():
        target.hardlink(m.name, m.linkname)
    else:
        raise _Refused("device, FIFO or other special file refused")


def safe_extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Extract a tar archive (any compression tarfile reads) into ``dest``; the member count."""
    count = 0
    member = None
    try:
        with tarfile.open(archive, "r:*") as tar, _open_target(archive, dest) as target:
            for m in tar:  # in archive order: each member sees the ones before it on disk
                member = m.name
                _extract_tar_member(tar, m, target)
                count += 1
            member = None
            _check_escaping_links(target, archive)
    except _Refused as e:
        raise ArchiveError(archive, member, e.problem) from None
    except ArchiveError:
        raise
    except (_READ_ERRORS + (OSError,)) as e:
        what = "cannot read tar archive" if member is None else "cannot extract"
        raise ArchiveError(archive, member, f"{what} ({e})") from None
    return count


def _zip_type(info: zipfile.ZipInfo) -> int:
    """The Unix file type bits of a zip member (0 when the zip does not record them)."""
    return stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0


def _zip_mode(info: zipfile.ZipInfo) -> int | None:
    mode = (info.external_attr >> 16) & 0o7777 if info.create_system == 3 else 0
    return mode or None


def _zip_member_problem(info: zipfile.ZipInfo) -> str | None:
    problem = _name_problem(info.filename)
    if problem:
        return problem
    kind = _zip_type(info)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
        return "device, FIFO or other special file refused"
    if kind == stat.S_IFLNK and info.file_size > _MAX_LINK_TARGET:
        return f"symlink target longer than {_MAX_LINK_TARGET} bytes refused"
    return None


def _extract_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: _Target) -> None:
    kind = _zip_type(info)
    if info.is_dir() or kind == stat.S_IFDIR:
        target.mkdir(info.filename, _zip_mode(info))
    elif kind == stat.S_IFLNK:
        link = zf.read(info).decode("utf-8", "surrogateescape")
        target.symlink(info.filename, link, info.filename)
    else:
        with zf.open(info) as data:
            target.write(info.filename, data, _zip_mode(info))


def safe_extract_zip(archive: str | os.PathLike, dest: str | os.PathLike) -> int:
    """Extract a zip archive into ``dest`` after checking every member's name; the member count."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(archive, None, f"cannot read zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            problem = _zip_member_problem(info)
            if problem:
                raise ArchiveError(archive, info.filename, problem)
        member = None
        try:
            with _open_target(archive, dest) as target:
                for info in infos:
                    member = info.filename
                    _extract_zip_member(zf, info, target)
                member = None
                _check_escaping_links(target, archive)
        except _Refused as e:
            raise ArchiveError(archive, member, e.problem) from None
        except ArchiveError:
            raise
        except (_READ_ERRORS + (OSError,)) as e:
            raise ArchiveError(archive, member, f"cannot extract ({e})") from None
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

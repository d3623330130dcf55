"""HDF5 stores shared by galleries, pools and manifolds: schema checks, atomic writes, locks.

Every fpt store is an HDF5 file whose root carries two attributes: ``fpt_kind`` (``gallery``,
``pool``, ``manifold`` ...) and ``fpt_schema`` (an integer version). Writers never modify the live
file in place: they write a temporary file in the same folder and ``os.replace`` it over the
target, so a crash or Ctrl-C leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
from filelock import FileLock, Timeout

from fpt.errors import InputError, StoreError

KIND_ATTR = "fpt_kind"
SCHEMA_ATTR = "fpt_schema"


def real_path(target: str | Path) -> Path:
    """``target`` with symlinks resolved, so writers replace the file a link points to (and lock
    that file), not the link itself. A symlink loop is a one-line error."""
    target = Path(target).expanduser()
    try:
        return target.resolve() if target.is_symlink() or target.parent.exists() else target.absolute()
    except (RuntimeError, OSError) as exc:  # RuntimeError: symlink loop (Python < 3.13)
        raise InputError(f"cannot resolve the path ({exc})", path=target) from None


def check_writable(target: str | Path, *, what: str = "output file", overwrite: bool = True) -> Path:
    """Fail fast, before slow work, if ``target`` (symlinks resolved) cannot be (re)written.

    Checks that the folder exists and accepts a new file (read-only mounts, permissions), that an
    existing file may be replaced (``overwrite``) and is writable: a file without write
    permission is refused rather than silently replaced. Returns the resolved path.
    """
    given = Path(target)
    path = real_path(given)
    if path.is_dir():
        raise InputError(f"is a folder, not a {what}", path=given)
    folder = path.parent
    if not folder.is_dir():
        raise InputError("folder does not exist" if not folder.exists() else "is not a folder", path=folder,
                         hint=f"create it first, or choose another path for the {what}")
    if path.exists():
        if not overwrite:
            raise InputError(f"{what} already exists", path=given, hint="pass --force to overwrite it, or choose another path")
        st = path.stat()
        # Mode bits as well as access(): root may write anything, but a 0444 file says "keep".
        if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK):
            raise InputError(f"{what} is read-only", path=given, hint="make it writable (chmod u+w) or choose another path")
        try:  # catches immutable files (chattr +i) and read-only mounts, which access() misses
            with open(path, "r+b"):
                pass
        except OSError as exc:
            raise InputError(f"{what} cannot be written ({exc.strerror})", path=given) from None
    try:  # the folder must take the temporary file that atomically replaces the target
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable",
                  errno.EPERM: "is not writable", errno.ENOSPC: "is on a full disk"}.get(exc.errno, f"cannot take a new file ({exc.strerror})")
        raise InputError(f"folder {reason}", path=folder, hint=f"choose another path for the {what}") from None
    return path


def _keep_ownership(src: Path, tmp: Path) -> None:
    """Give the replacement file the mode, owner and group of the file it replaces."""
    st = src.stat()
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    try:
        os.chown(tmp, st.st_uid, st.st_gid)
    except PermissionError:  # only root may give a file away; keep at least the group if allowed
        try:
            os.chown(tmp, -1, st.st_gid)
        except PermissionError:
            pass


@contextmanager
def atomic_path(target: str | Path, *, copy_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on clean exit it atomically replaces ``target``.

    A symlinked ``target`` is resolved first, so the file it points to is replaced and the link
    stays; the replacement keeps the replaced file's mode, owner and group. With
    ``copy_existing`` the temporary file starts as a copy of ``target`` (for read-modify-write).
    On any exception, KeyboardInterrupt included, the temporary file is removed and ``target``
    is untouched.
    """
    target = real_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if copy_existing and target.exists():
            shutil.copyfile(target, tmp)
        else:
            tmp.unlink()
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if target.exists():
            _keep_ownership(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def store_lock(target: str | Path, timeout: float = 600.0) -> Iterator[None]:
    """Exclusive inter-process lock for writers of ``target`` (a ``.lock`` file beside the real
    file, so writers through a symlink and through its target share one lock)."""
    target = real_path(target)
    lock = FileLock(str(target) + ".lock")
    try:
        with lock.acquire(timeout=timeout):
            yield
    except Timeout:
        raise StoreError("another fpt process has held the lock for too long", path=target,
                         hint=f"if none is running, delete {target}.lock") from None


def init_store(f: h5py.File, kind: str, schema: int) -> None:
    """Stamp a new store's root with its kind and schema version."""
    f.attrs[KIND_ATTR] = kind
    f.attrs[SCHEMA_ATTR] = schema


def open_store(path: str | Path, kind: str, schema: int, mode: str = "r") -> h5py.File:
    """Open an existing fpt store, checking it is HDF5, of ``kind`` and of schema ``schema``."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no such {kind} file", path=path)
    try:
        f = h5py.File(path, mode)
    except OSError as exc:
        raise StoreError(f"not an HDF5 file (cannot be an fpt {kind})", path=path) from exc
    found_kind = f.attrs.get(KIND_ATTR)
    if isinstance(found_kind, bytes):
        found_kind = found_kind.decode()
    if found_kind != kind:
        f.close()
        what = f"an fpt {found_kind}" if found_kind else "an HDF5 file not written by fpt"
        raise StoreError(f"this is {what}, not an fpt {kind}", path=path)
    found_schema = int(f.attrs.get(SCHEMA_ATTR, -1))
    if found_schema != schema:
        f.close()
        raise StoreError(f"{kind} schema {found_schema} is not supported (this fpt reads {schema})", path=path,
                         hint="upgrade fpt or rebuild the file")
    return f


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (identity of images and checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()

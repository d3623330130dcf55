"""HDF5 stores shared by galleries, pools and manifolds: schema checks, atomic writes, locks.

Every fpt store is an HDF5 file whose root carries two attributes: ``fpt_kind`` (``gallery``,
``pool``, ``manifold`` ...) and ``fpt_schema`` (an integer version). Writers never modify the live
file in place: they write a temporary file in the same folder and ``os.replace`` it over the
target, so a crash or Ctrl-C leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
from filelock import FileLock, Timeout

from fpt.errors import StoreError

KIND_ATTR = "fpt_kind"
SCHEMA_ATTR = "fpt_schema"


@contextmanager
def atomic_path(target: str | Path, *, copy_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on clean exit it atomically replaces ``target``.

    With ``copy_existing`` the temporary file starts as a copy of ``target`` (for read-modify-
    write). On any exception, KeyboardInterrupt included, the temporary file is removed and
    ``target`` is untouched.
    """
    target = Path(target)
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
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def store_lock(target: str | Path, timeout: float = 600.0) -> Iterator[None]:
    """Exclusive inter-process lock for writers of ``target`` (a ``.lock`` file beside it)."""
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

"""Scan files: JSONL / CSV records, torn-tail detection, summaries read back from the file, merging parts."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpt.errors import ConfigError, StoreError
from fpt.scan.shard import find_parts, part_path

FORMATS = ("jsonl", "csv")


# ------------------------------------------------------------------------------------- formats


def detect_format(path: Path, default: str = "jsonl") -> str:
    """``jsonl`` or ``csv`` from a file's first byte (an empty file is ``default``)."""
    try:
        with open(path, "rb") as fh:
            first = fh.read(1)
    except FileNotFoundError:
        return default
    if not first:
        return default
    return "jsonl" if first == b"{" else "csv"


def _flatten(rec: dict) -> dict:
    """CSV cells of one record: lists of dicts -> ``<key><i>_<sub>`` (1-based), lists -> ``<prefix><i>``."""
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                if isinstance(x, dict):
                    for sk, sv in x.items():
                        out[f"{k}{i + 1}_{sk}"] = _cell(sv)
                else:
                    out[f"{'e' if k == 'embedding' else k}{i}"] = _cell(x)
        else:
            out[k] = _cell(v)
    return out


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return repr(v)
    return v


class _Jsonl:
    name = "jsonl"

    def __init__(self, columns: Sequence[str] | None = None) -> None:
        self.columns = columns

    def header(self) -> bytes:
        return b""

    def encode(self, records: Sequence[dict]) -> bytes:
        return "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode()

    def scan(self, path: Path) -> Iterator[tuple[int, int, dict | None]]:
        """``(start, end, record)`` per line; ``record`` is None for a line that is not a record."""
        with open(path, "rb") as fh:
            pos = 0
            for line in fh:
                end = pos + len(line)
                rec = None
                if line.endswith(b"\n"):
                    try:
                        obj = json.loads(line)
                        rec = obj if isinstance(obj, dict) and "path" in obj else None
                    except ValueError:
                        rec = None
                yield pos, end, rec
                pos = end


class _Csv:
    name = "csv"

    def __init__(self, columns: Sequence[str] | None = None) -> None:
        self.columns = list(columns) if columns else None

    def header(self) -> bytes:
        return self._rows([dict(zip(self.columns, self.columns))])

    def _rows(self, rows: Sequence[dict]) -> bytes:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, restval="", extrasaction="raise", lineterminator="\n")
        w.writerows(rows)
        return buf.getvalue().encode("utf-8", "surrogateescape")

    def encode(self, records: Sequence[dict]) -> bytes:
        return self._rows([_flatten(r) for r in records])

    def scan(self, path: Path) -> Iterator[tuple[int, int, dict | None]]:
        """``(start, end, row)`` per CSV record after the header (row None when torn or malformed)."""
        with open(path, "rb") as fh:
            state = {"pos": 0, "nl": True}

            def lines() -> Iterator[str]:
                for raw in fh:
                    state["pos"] += len(raw)
                    state["nl"] = raw.endswith(b"\n")
                    yield raw.decode("utf-8", "surrogateescape")

            reader = csv.reader(lines(), strict=True)
            try:
                header = next(reader)
            except (StopIteration, csv.Error):
                return  # empty, or a header torn by a kill: no records yet
            if not state["nl"]:
                return
            if "path" not in header:
                raise StoreError("not an fpt scan CSV (no 'path' column)", path=path)
            self.columns = self.columns or header
            start = state["pos"]
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error:
                    yield start, state["pos"], None
                    return
                ok = state["nl"] and len(row) == len(header)
                yield start, state["pos"], dict(zip(header, row)) if ok else None
                start = state["pos"]


def _format(name: str, columns: Sequence[str] | None = None):
    if name not in FORMATS:
        raise ConfigError(f"unknown output format {name!r}", hint="jsonl or csv")
    return _Jsonl(columns) if name == "jsonl" else _Csv(columns)


def _valid_records(path: Path, fmt) -> Iterator[tuple[int, int, dict]]:
    """Complete records of ``path``; a torn *last* record is skipped, damage elsewhere is an error."""
    bad: tuple[int, int] | None = None
    n = 0
    for start, end, rec in fmt.scan(path):
        n += 1
        if bad is not None:
            raise StoreError(f"record {bad[0]} (byte {bad[1]}) is damaged and is not the last one",
                             path=path, hint="this file was not written by fpt or was edited; scan into a new file")
        if rec is None:
            bad = (n, start)
            continue
        yield start, end, rec


def valid_end(path: Path, fmt) -> int:
    """Byte offset just past the last complete record (0 for a missing file)."""
    if not path.exists():
        return 0
    end = 0
    if fmt.name == "csv":
        with open(path, "rb") as fh:
            head = fh.readline()
        end = len(head) if head.endswith(b"\n") else 0
    for _s, e, _r in _valid_records(path, fmt):
        end = e
    return end


def read_records(path: str | Path, fmt_name: str | None = None) -> Iterator[dict]:
    """The complete records of a scan file (CSV rows come back as dicts of strings)."""
    path = Path(path)
    fmt = _format(fmt_name or detect_format(path))
    for _s, _e, rec in _valid_records(path, fmt):
        yield rec


# ------------------------------------------------------------------------------------- summary


@dataclass
class ScanSummary:
    """Counts over a scan file (read back from the file, not from memory) plus this run's work."""

    out: str
    format: str
    records: int = 0
    images: int = 0  # readable
    failed: int = 0
    low_confidence: int = 0
    models: dict[str, int] = field(default_factory=dict)  # identify: per decided model ("unknown" too)
    unknown: int = 0
    # this run (this process's share under sharding)
    inputs: int = 0
    new: int = 0
    skipped: int = 0  # already in the output with the same sha256
    rescanned: int = 0  # in the output but changed on disk: scanned again, old record replaced
    dropped_torn: bool = False  # a torn last record left by a killed run was cut off
    part: str | None = None  # the part file this process wrote (sharded runs)
    shard: tuple[int, int] = (0, 1)


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, (int, str)) and str(v).lower() in ("1", "true"))


def summarise_file(path: str | Path, fmt_name: str | None = None) -> ScanSummary:
    """Counts per model, unknown, failed and low-confidence, streamed from the file."""
    path = Path(path)
    name = fmt_name or detect_format(path)
    s = ScanSummary(str(path), name)
    models: Counter[str] = Counter()
    for rec in read_records(path, name):
        s.records += 1
        if rec.get("error"):
            s.failed += 1
            continue
        s.images += 1
        s.low_confidence += _truthy(rec.get("low_confidence"))
        if "model" in rec:
            models[str(rec["model"])] += 1
    s.models = dict(models.most_common())
    from fpt.attribution import UNKNOWN

    s.unknown = models.get(UNKNOWN, 0)
    return s


def _with_sha(rec: dict, sha: str | None) -> dict:
    """``rec`` with ``sha256`` right after ``path``."""
    out = {"path": rec["path"], "sha256": sha}
    out.update((k, v) for k, v in rec.items() if k != "path")
    return out


def _recorded(path: Path, fmt) -> dict[str, str | None]:
    """path -> sha256 of every complete record in ``path`` (the resume index)."""
    if not path.exists():
        return {}
    return {str(r["path"]): (r.get("sha256") or None) for _s, _e, r in _valid_records(path, fmt)}


def _check_columns(path: Path, fmt) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    found = detect_format(path)
    if found != fmt.name:
        raise ConfigError(f"it holds {found.upper()}, not {fmt.name.upper()}", path=path,
                          hint="resume with the same output option, or scan into a new file")
    if fmt.name != "csv":
        return
    with open(path, "rb") as fh:
        first = fh.readline()
    if not first.endswith(b"\n"):
        return  # header torn by a kill: rewritten
    if first != fmt.header():
        raise ConfigError("its columns differ from this command's (other --top-k, extractor or command?)", path=path,
                          hint="resume with the same options, or scan into a new file")


def _target(path: Path) -> Path:
    """Write through a symlink (keep the link), never replace it with a file."""
    return path.resolve() if path.is_symlink() else path


def _drop_before(path: Path, fmt, offset: int, paths: set[str]) -> None:
    """Rewrite ``path`` without records of ``paths`` that start before ``offset`` (superseded)."""
    from fpt.storage import atomic_path

    target = _target(path)
    with atomic_path(target) as tmp:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(fmt.header() if fmt.name == "csv" else b"")
            for s, e, rec in _valid_records(path, fmt):
                if s < offset and str(rec["path"]) in paths:
                    continue
                src.seek(s)
                dst.write(src.read(e - s))
        shutil.copymode(target, tmp)


def merge_parts(out: str | Path, count: int | None = None, *, keep_parts: bool = False) -> Path:
    """Join ``OUT.rank<i>-of-<n>`` (i = 0..n-1) into ``OUT``, in index order; then delete the parts.

    An existing ``OUT`` (from an earlier, resumed scan) is kept at the front, minus records that
    the parts replace. Refuses when a part is missing or the parts' formats or columns differ.
    """
    from fpt.storage import atomic_path

    out = Path(out)
    groups = find_parts(out)
    if count is None:
        if not groups:
            raise ConfigError("no part files to merge", path=out, hint=f"expected {out.name}.rank0-of-N ...")
        if len(groups) > 1:
            raise ConfigError(f"parts of runs with different process counts ({', '.join(map(str, sorted(groups)))})",
                              path=out, hint="merge one set: fpt scan merge FILE --count N")
        count = next(iter(groups))
    parts = [part_path(out, i, count) for i in range(count)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise ConfigError(f"{len(missing)} of {count} part files are missing ({', '.join(missing[:3])})", path=out,
                          hint="rerun the missing shard(s) with --resume, then merge")
    names = {detect_format(p, "") for p in parts} - {""}
    if out.exists():
        names.add(detect_format(out, ""))
    names.discard("")
    if len(names) > 1:
        raise ConfigError("part files mix JSONL and CSV", path=out)
    name = names.pop() if names else "jsonl"
    header = b""
    if name == "csv":
        heads = set()
        for p in parts + ([out] if out.exists() else []):
            with open(p, "rb") as fh:
                heads.add(fh.readline())
        if len(heads) != 1:
            raise ConfigError("part files have different CSV columns", path=out)
        header = heads.pop()
    fmt = _format(name)
    replaced: set[str] = set()
    if out.exists():
        for p in parts:
            replaced.update(str(r["path"]) for _s, _e, r in _valid_records(p, fmt))
    target = _target(out)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as dst:
            dst.write(header)
            for src_path in ([out] if out.exists() else []) + parts:
                drop = replaced if src_path == out else set()
                with open(src_path, "rb") as src:
                    for s, e, rec in _valid_records(src_path, fmt):
                        if drop and str(rec["path"]) in drop:
                            continue
                        src.seek(s)
                        dst.write(src.read(e - s))
        if target.exists():
            shutil.copymode(target, tmp)
    if not keep_parts:
        for p in parts:
            p.unlink(missing_ok=True)
    return out

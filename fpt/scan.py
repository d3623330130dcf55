"""Attribution at scale: stream results to a file, resume after a crash, decode in worker
processes, split one scan over many processes (torchrun ranks, ``--shard i/n``).

Output file (``--jsonl FILE`` or ``--csv-file FILE``)
    One record per input file, in input order. A result record is the command's ``--json`` record
    (:func:`fpt.attribution.identification_record`, :func:`fpt.extractor.embed.embedding_record`)
    with ``sha256`` (of the file's bytes) added after ``path``; a file that cannot be used gets a
    failure record (:func:`fpt.attribution.failure_record` + ``sha256``). JSONL holds one JSON
    object per line. CSV has a header and one row per record: nested fields are flattened
    (``top`` -> ``top1_model, top1_score, ...``; ``embedding`` -> ``e0, e1, ...``), booleans are
    0/1 and failures fill the ``error`` column.

Crash safety
    Records are written ``flush_every`` at a time, each chunk in one write followed by
    ``fsync``: a SIGKILL loses at most the chunk in flight. The only damage a kill can do is a
    torn last line; readers ignore it and ``--resume`` cuts it off before appending. A damaged
    line anywhere else is reported, never silently dropped.

Resume
    With ``resume=True`` the existing output is read first; a file whose path is already there
    *and* whose bytes still hash to the recorded sha256 is skipped (failures included: an
    unreadable file is recorded once, not retried on every resume). A file whose content has
    changed is scanned again and its old record removed, so the output keeps exactly one record
    per path. Paths are compared as written in the records (as found from the command's
    arguments), so resume from the same folder with the same arguments. The index of recorded
    paths is the one part of a scan whose memory grows with the number of images (~200 bytes
    per image); results themselves are never held.

Sharding
    :func:`shard_spec` turns ``--shard i/n`` and the torchrun environment (``RANK``,
    ``WORLD_SIZE``) into one flat ``(index, count)``: process ``index`` of ``count`` scans the
    contiguous block ``index`` of the (sorted) file list and writes ``FILE.rank<index>-of-<count>``.
    Concatenating the parts in index order gives exactly the single-process file
    (:func:`merge_parts`). Under torchrun alone (no ``--shard``) the ranks meet at a barrier and
    rank 0 merges; with ``--shard`` (e.g. SLURM arrays) run ``fpt scan merge FILE`` afterwards.
    ``fpt synth`` uses the same :func:`shard_spec` (round-robin over its job list).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from fpt.errors import ConfigError, FptError, StoreError

FLUSH_EVERY = 256
#: A barrier must outlive the slowest rank of a long scan; gloo's default (30 min) would not.
BARRIER_TIMEOUT = timedelta(days=7)
FORMATS = ("jsonl", "csv")

__all__ = ["FLUSH_EVERY", "ScanSummary", "Shard", "shard_spec", "shard_bounds", "part_path", "find_parts",
           "scan_identify", "scan_embed", "merge_parts", "summarise_file", "read_records", "detect_format",
           "rank_device"]


# ------------------------------------------------------------------------------------- sharding


@dataclass(frozen=True)
class Shard:
    """This process's share of a job: part ``index`` of ``count``.

    ``world`` > 1 when running under torchrun; ``auto_merge`` when rank 0 should assemble the
    parts itself (torchrun without ``--shard``).
    """

    index: int = 0
    count: int = 1
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def auto_merge(self) -> bool:
        return self.world > 1 and self.count == self.world



def shard_spec(shard: str | None = None, env: dict[str, str] | None = None) -> Shard:
    """Combine ``--shard i/n`` with torchrun's ``RANK`` / ``WORLD_SIZE``: part ``i*W + r`` of ``n*W``."""
    from fpt.synth.train import parse_shard

    env = os.environ if env is None else env
    i, n = parse_shard(shard)
    world = int(env.get("WORLD_SIZE", "1") or 1)
    rank = int(env.get("RANK", "0") or 0)
    local = int(env.get("LOCAL_RANK", "0") or 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad torchrun environment RANK={rank} WORLD_SIZE={world}")
    return Shard(i * world + rank, n * world, rank, world, local)


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous block ``index`` of ``count`` over ``n`` items (sizes differ by at most one)."""
    return n * index // count, n * (index + 1) // count


def part_path(out: str | Path, index: int, count: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.rank{index}-of-{count}")


def find_parts(out: str | Path) -> dict[int, list[Path]]:
    """Part files beside ``out``, grouped by the count they were written for."""
    out = Path(out)
    found: dict[int, list[Path]] = {}
    prefix = f"{out.name}.rank"
    for p in out.parent.glob(f"{_glob_escape(out.name)}.rank*-of-*"):
        idx, sep, cnt = p.name[len(prefix):].partition("-of-")
        if sep and idx.isdigit() and cnt.isdigit():
            found.setdefault(int(cnt), []).append(p)
    return found


def _glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def rank_device(device: str, shard: Shard) -> str:
    """Under torchrun, ``auto``/``cuda`` mean this rank's own GPU (``cuda:LOCAL_RANK``)."""
    if shard.world > 1 and torch.cuda.is_available() and device.strip().lower() in ("auto", "cuda"):
        return f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    return device


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


# ------------------------------------------------------------------------------------- decoding


class _DecodeSet(torch.utils.data.Dataset):
    """Hash, decode and window one file per item; runs in DataLoader worker processes.

    ``items`` are ``(path, recorded, recorded_sha)``. Returns ``(i, path, sha, crops, low, hw,
    error, skip)``; a file already recorded with the same sha256 is not decoded (``skip``).
    """

    def __init__(self, items: Sequence[tuple[Path, bool, str | None]], size: int, n: int) -> None:
        self.items = items
        self.size, self.n = size, n

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from fpt.images import load_image, sliding_windows
        from fpt.storage import file_sha256

        path, recorded, expected = self.items[i]
        try:
            sha: str | None = file_sha256(path)
        except OSError:
            sha = None  # the decoder below says why, in the user's terms
        if recorded and expected == sha:
            return i, path, sha, None, False, (0, 0), None, True
        try:
            img = load_image(path)
        except FptError as exc:
            return i, path, sha, None, False, (0, 0), exc.one_line(), False
        crops, low = sliding_windows(img, self.size, self.n)
        return i, path, sha, crops, low, (int(img.shape[-2]), int(img.shape[-1])), None, False


def _identity(x):
    return x


def _decoded(items: Sequence[tuple[Path, bool, str | None]], size: int, n: int, workers: int) -> Iterator[tuple]:
    """Decoded items in input order (DataLoader keeps order with any number of workers)."""
    from torch.utils.data import DataLoader

    ds = _DecodeSet(items, size, n)
    if workers <= 0:
        for i in range(len(ds)):
            yield ds[i]
        return
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                        prefetch_factor=4, persistent_workers=False)
    yield from loader


# ------------------------------------------------------------------------------------- the scan


RecordMaker = Callable[[list], list[dict]]  # ImageEmbeddings -> result records (same order)


@dataclass
class _Job:
    files: list[Path]
    out: Path
    fmt_name: str
    template: dict  # a result record, to fix the CSV columns
    make_records: RecordMaker
    ex: Any
    windows: int | None
    batch_size: int
    workers: int
    resume: bool
    flush_every: int
    on_done: Callable[[int], None] | None
    shard: Shard


def _columns(template: dict) -> list[str]:
    from fpt.attribution import failure_record

    cols = list(_flatten(_with_sha(template, None)))
    for k in _with_sha(failure_record("", ""), None):
        if k not in cols:
            cols.append(k)
    return cols


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


class _Sink:
    """Appends records to ``path`` in fsync'ed chunks."""

    def __init__(self, path: Path, fmt, start: int) -> None:
        self.path, self.fmt = path, fmt
        new = not path.exists() or start == 0
        self.fh = open(path, "r+b" if path.exists() else "wb")
        self.fh.truncate(start)  # cut off a torn last record of a killed run
        self.fh.seek(start)
        if new and fmt.header():
            self._write(fmt.header())

    def _write(self, data: bytes) -> None:
        if data:
            self.fh.write(data)
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def write(self, records: Sequence[dict]) -> None:
        self._write(self.fmt.encode(records))

    def close(self) -> None:
        self.fh.close()


def _run(job: _Job) -> ScanSummary:
    """Scan ``job.files`` into ``job.out`` (one process's share); returns this run's counts."""
    from fpt.extractor.embed import ImageEmbedding, WindowBatcher, window_grid

    fmt = _format(job.fmt_name, _columns(job.template) if job.fmt_name == "csv" else None)
    out = job.out
    if out.exists() and not job.resume:
        raise ConfigError("output exists", path=out, hint="pass --resume to continue that scan, or choose a new file")
    _check_columns(out, fmt)
    known = _recorded(out, fmt)
    if job.shard.count > 1 and job.resume:
        # the merged file of an earlier sharded run counts as done too
        final = _final_path(out, job.shard)
        if final.exists():
            _check_columns(final, _format(job.fmt_name, fmt.columns))
            known.update(_recorded(final, _format(job.fmt_name, fmt.columns)))
    start = valid_end(out, fmt)
    summary = ScanSummary(str(out), fmt.name, inputs=len(job.files), shard=(job.shard.index, job.shard.count))
    summary.dropped_torn = out.exists() and start < out.stat().st_size
    items = [(p, str(p) in known, known.get(str(p))) for p in job.files]
    del known

    size, n = window_grid(job.ex, job.windows)
    batcher = WindowBatcher(job.ex, size, n, job.batch_size)
    order: list[int] = []  # indices decoded, waiting for their embedding
    ready: dict[int, Any] = {}
    meta: dict[int, tuple[Path, str | None]] = {}
    chunk: list[tuple[Path, str | None, Any]] = []  # in input order
    rescanned: set[str] = set()
    sink = _Sink(out, fmt, start)

    def flush() -> None:
        if not chunk:
            return
        embs = [x for _p, _s, x in chunk if isinstance(x, ImageEmbedding)]
        made = iter(job.make_records(embs)) if embs else iter(())
        from fpt.attribution import failure_record

        recs = []
        for p, sha, x in chunk:
            rec = next(made) if isinstance(x, ImageEmbedding) else failure_record(p, x)
            recs.append(_with_sha(rec, sha))
        sink.write(recs)
        summary.new += len(recs)
        chunk.clear()

    def drain() -> None:
        while order and order[0] in ready:
            i = order.pop(0)
            x = ready.pop(i)
            p, sha = meta.pop(i)
            if job.on_done is not None:
                job.on_done(1)
            if x is None:  # skipped: already recorded
                summary.skipped += 1
                continue
            chunk.append((p, sha, x))
            if len(chunk) >= job.flush_every:
                flush()

    try:
        for i, p, sha, crops, low, hw, err, skip in _decoded(items, size, n, job.workers):
            order.append(i)
            meta[i] = (p, sha)
            if items[i][1] and not skip:
                rescanned.add(str(p))
            if skip:
                ready[i] = None
            elif err is not None:
                ready[i] = err
            else:
                for idx, e, lc, shape in batcher.add_windows(i, crops, low, hw):
                    ready[idx] = ImageEmbedding(meta[idx][0], e, lc, *shape)
            drain()
        for idx, e, lc, shape in batcher.flush():
            ready[idx] = ImageEmbedding(meta[idx][0], e, lc, *shape)
        drain()
    finally:
        # Ctrl-C or an error: what is decided is kept (a resume skips it)
        try:
            flush()
        finally:
            sink.close()
    summary.rescanned = len(rescanned)
    if rescanned:
        _drop_before(out, fmt, start, rescanned)
    return summary


def _final_path(part: Path, shard: Shard) -> Path:
    suffix = f".rank{shard.index}-of-{shard.count}"
    return part.with_name(part.name[: -len(suffix)])


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


def _barrier_and_merge(job_out: Path, shard: Shard) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        dist.barrier()
        if shard.rank == 0:
            merge_parts(job_out, shard.count)
        dist.barrier()  # the other ranks return only once the merged file exists
    finally:
        dist.destroy_process_group()


def _init_dist(shard: Shard) -> None:
    """Join the process group before the slow part, so a rank that fails to start fails fast."""
    if shard.auto_merge:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)


def _scan(files: Sequence[Path], out: Path, fmt_name: str, template: dict, make_records: RecordMaker, ex,
          *, windows: int | None, batch_size: int, workers: int, resume: bool, flush_every: int,
          on_done: Callable[[int], None] | None, shard: Shard | None) -> ScanSummary:
    shard = shard or Shard()
    out = Path(out)
    if fmt_name not in FORMATS:
        raise ConfigError(f"unknown output format {fmt_name!r}", hint="jsonl or csv")
    if flush_every < 1:
        raise ConfigError("--flush-every must be >= 1")
    if workers < 0:
        raise ConfigError("--workers must be >= 0")
    others = {c: ps for c, ps in find_parts(out).items() if c != shard.count}
    if others:
        c = next(iter(others))
        raise ConfigError(f"part files of a {c}-process scan are next to it", path=out,
                          hint=f"merge them first (fpt scan merge {out}) or rerun with {c} processes and --resume")
    if shard.count == 1:
        s = _run(_Job(list(files), out, fmt_name, template, make_records, ex, windows, batch_size, workers, resume,
                      flush_every, on_done, shard))
        return _with_file_counts(s, out, fmt_name)
    lo, hi = shard_bounds(len(files), shard.index, shard.count)
    part = part_path(out, shard.index, shard.count)
    if out.exists() and not resume:
        raise ConfigError("output exists", path=out, hint="pass --resume to continue that scan, or choose a new file")
    _init_dist(shard)
    s = _run(_Job(list(files[lo:hi]), part, fmt_name, template, make_records, ex, windows, batch_size, workers,
                  resume, flush_every, on_done, shard))
    s.part = str(part)
    s = _with_file_counts(s, part, fmt_name)  # before the merge deletes the part
    if shard.auto_merge:
        _barrier_and_merge(out, shard)
        if shard.rank == 0:  # the whole scan's counts; other ranks report their part
            s.out = str(out)
            s = _with_file_counts(s, out, fmt_name)
    return s


def _with_file_counts(s: ScanSummary, path: Path, fmt_name: str) -> ScanSummary:
    f = summarise_file(path, fmt_name)
    for k in ("records", "images", "failed", "low_confidence", "models", "unknown"):
        setattr(s, k, getattr(f, k))
    return s


def scan_identify(files: Sequence[Path], out: str | Path, gallery, ex, *, fmt: str = "jsonl", top_k: int = 3,
                  threshold: float | None = None, windows: int | None = None, batch_size: int = 64,
                  workers: int = 0, resume: bool = False, flush_every: int = FLUSH_EVERY,
                  on_done: Callable[[int], None] | None = None, shard: Shard | None = None) -> ScanSummary:
    """``fpt identify --jsonl/--csv-file``: identify every file against ``gallery``, streaming records to ``out``."""
    from fpt.attribution import Identification, identification_record, identify_embeddings

    k = max(1, min(top_k, len(gallery.models)))
    template = identification_record(Identification("", "", 0.0, "", [("", 0.0)] * k, None))

    fingerprints = gallery.fingerprint_matrix()  # once, not per chunk: O(models x images per model)

    def make(embs: list) -> list[dict]:
        res = identify_embeddings(gallery, np.stack([r.embedding for r in embs]), top_k=top_k, threshold=threshold,
                                  paths=[str(r.path) for r in embs], fingerprints=fingerprints,
                                  low_confidence=np.array([r.low_confidence for r in embs]))
        return [identification_record(r) for r in res]

    return _scan(files, Path(out), fmt, template, make, ex, windows=windows, batch_size=batch_size, workers=workers,
                 resume=resume, flush_every=flush_every, on_done=on_done, shard=shard)


def scan_embed(files: Sequence[Path], out: str | Path, ex, *, fmt: str = "jsonl", windows: int | None = None,
               batch_size: int = 64, workers: int = 0, resume: bool = False, flush_every: int = FLUSH_EVERY,
               on_done: Callable[[int], None] | None = None, shard: Shard | None = None) -> ScanSummary:
    """``fpt embed --jsonl/--csv-file``: one embedding record per file, streamed to ``out``."""
    from fpt.extractor.embed import ImageEmbedding, embedding_record

    dim = int(ex.embedding_dim)
    template = embedding_record(ImageEmbedding("", np.zeros(dim, np.float32), False, 0, 0))

    def make(embs: list) -> list[dict]:
        return [embedding_record(r) for r in embs]

    return _scan(files, Path(out), fmt, template, make, ex, windows=windows, batch_size=batch_size, workers=workers,
                 resume=resume, flush_every=flush_every, on_done=on_done, shard=shard)

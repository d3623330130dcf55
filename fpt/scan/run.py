"""Running a scan: decoding in DataLoader workers, embedding, chunked fsync'ed writes, resume, torchrun."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from fpt.errors import ConfigError, FptError
from fpt.scan.files import (FORMATS, ScanSummary, _check_columns, _drop_before, _flatten, _format, _recorded, _with_sha,
                            merge_parts, summarise_file, valid_end)
from fpt.scan.shard import Shard, find_parts, part_path, shard_bounds

FLUSH_EVERY = 256
#: A barrier must outlive the slowest rank of a long scan; gloo's default (30 min) would not.
BARRIER_TIMEOUT = timedelta(days=7)


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
                  on_done: Callable[[int], None] | None = None, shard: Shard | None = None,
                  **decision) -> ScanSummary:
    """``fpt identify --jsonl/--csv-file``: identify every file against ``gallery``, streaming records to ``out``.

    ``decision`` (``cohort``, ``min_log10_lr``, ``lr_from``, ``rank``) is passed to
    :func:`fpt.attribution.identify_embeddings` unchanged, so a scan decides exactly as ``--json`` does.
    """
    from fpt.attribution import Identification, identification_record, identify_embeddings

    k = max(1, min(top_k, len(gallery.models)))
    template = identification_record(Identification("", "", 0.0, "", [("", 0.0)] * k, None))

    from fpt.attribution import gallery_lr_calibration, gallery_ranking, rank_shrinkage

    # once, not per chunk: they depend on the gallery only (O(models x images per model))
    fingerprints = gallery.fingerprint_matrix()
    if decision.get("lr_from", "gallery") == "gallery":
        decision = {**decision, "lr_calibration": gallery_lr_calibration(gallery)}
        shrinkage = rank_shrinkage(decision.get("rank", "whitened"))
        if shrinkage is not None:
            decision["ranking"] = gallery_ranking(gallery, shrinkage)

    def make(embs: list) -> list[dict]:
        res = identify_embeddings(gallery, np.stack([r.embedding for r in embs]), top_k=top_k, threshold=threshold,
                                  paths=[str(r.path) for r in embs], fingerprints=fingerprints,
                                  low_confidence=np.array([r.low_confidence for r in embs]), **decision)
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

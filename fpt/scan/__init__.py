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

from fpt.scan.files import (FORMATS, ScanSummary, detect_format, merge_parts, read_records,
                            summarise_file)
from fpt.scan.run import FLUSH_EVERY, scan_embed, scan_identify
from fpt.scan.shard import Shard, find_parts, part_path, rank_device, shard_bounds, shard_spec

__all__ = ["FLUSH_EVERY", "FORMATS", "ScanSummary", "Shard", "shard_spec", "shard_bounds", "part_path", "find_parts",
           "scan_identify", "scan_embed", "merge_parts", "summarise_file", "read_records", "detect_format",
           "rank_device"]

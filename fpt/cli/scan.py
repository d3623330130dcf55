"""``fpt scan merge``: join the part files of a sharded ``fpt identify`` / ``fpt embed`` scan.

The scan itself is ``fpt identify ... --jsonl FILE`` (or ``fpt embed``); under ``torchrun`` rank 0
merges on its own, so this command is for ``--shard i/n`` runs (e.g. SLURM arrays) and for
finishing a run whose rank 0 died. Logic in :mod:`fpt.scan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fpt.cli.options import JsonOpt


def merge_cmd(
    out: Path = typer.Argument(..., help="The scan's output FILE; its parts are FILE.rank<i>-of-<n>."),
    count: Optional[int] = typer.Option(None, "--count", help="n, when parts of several process counts exist."),
    keep_parts: bool = typer.Option(False, "--keep-parts", help="Do not delete the part files after merging."),
    json_out: JsonOpt = False,
) -> None:
    """Concatenate FILE.rank0-of-n ... FILE.rank<n-1>-of-n into FILE (the single-process result)."""
    from fpt.report import print_json, print_scan_summary
    from fpt.scan import merge_parts, summarise_file

    merge_parts(out, count, keep_parts=keep_parts)
    s = summarise_file(out)
    if json_out:
        print_json(s)
    else:
        print_scan_summary(s)


def register(app: typer.Typer) -> None:
    """Add ``fpt scan`` and its sub-commands to ``app``."""
    scan = typer.Typer(help="Large scans: join the parts of a sharded identify / embed scan.", no_args_is_help=True)
    app.add_typer(scan, name="scan")
    scan.command("merge")(merge_cmd)

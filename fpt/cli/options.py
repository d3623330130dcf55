"""Option declarations shared by the commands, and validation callbacks for numeric options that
typer's ``min=``/``max=`` cannot express.

Integer bounds use ``typer.Option(..., min=1)``; these cover open intervals on floats. A bad value
becomes a usage error: one line on stderr and exit code 2, before any work starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[Optional[float]], Optional[float]]:
    """A typer callback accepting finite floats in [lo, hi] (``lo_open``/``hi_open``: exclusive ends)."""
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    shown = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"

    def check(value: Optional[float]) -> Optional[float]:
        if value is None:
            return value
        bad = not math.isfinite(value)
        if lo is not None:
            bad |= value < lo or (lo_open and value == lo)
        if hi is not None:
            bad |= value > hi or (hi_open and value == hi)
        if bad:
            raise typer.BadParameter(f"{value:g} is not in {shown}")
        return value

    return check


POSITIVE = float_range(0.0, lo_open=True)
NON_NEGATIVE = float_range(0.0)
PROBABILITY = float_range(0.0, 1.0)
OPEN_UNIT = float_range(0.0, 1.0, lo_open=True, hi_open=True)
HALF_OPEN_UNIT = float_range(0.0, 1.0, hi_open=True)

# One wording for every command's --device.
DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: CUDA when available, else CPU)."

# ---------------------------------------------------------------- options shared by several commands
# Declared once, used as ``name: GalleryOpt = None`` so that every command spells and explains
# an option the same way.

EXTRACTOR_HELP = "Extractor checkpoint (.pt); default: the weights shipped with fpt."
GALLERY_HELP = "Gallery file (default $FPT_GALLERY or $XDG_DATA_HOME/fpt/gallery.h5)."
COHORT_HELP = "Cohort file (default: <extractor>.cohort.h5 beside the checkpoint, if present)."
MIN_LR_HELP = ("Attribute / call 'same model' when log10 LR reaches this level (0: LR >= 1, the evidence favours "
               "it; 1: LR >= 10, moderate support).")
LR_FROM_HELP = ("Likelihood-ratio calibration: gallery (raw cosine, fitted on the gallery's own images; default) or "
                "cohort (adaptive S-norm against the extractor's cohort, fitted on cohort models).")
THRESHOLD_HELP = "Decide on the raw cosine with this threshold instead of the likelihood ratio."
RANK_HELP = ("Order the gallery's models by: whitened (cosine after a whitening fitted on the gallery's own enrolled "
             "images, default) or cosine (raw). Either way the decision reads the first model's raw cosine.")
DEFAULT_MIN_LOG10_LR = 0.0  # = fpt.calibration.DEFAULT_MIN_LOG10_LR (not imported: keeps CLI start-up light)

GalleryOpt = Annotated[Optional[Path], typer.Option("--gallery", "-g", help=GALLERY_HELP)]
ExtractorOpt = Annotated[Optional[Path], typer.Option("--extractor", help=EXTRACTOR_HELP)]
DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
WindowsOpt = Annotated[Optional[int], typer.Option("--windows", min=1, help="n for n x n windows (default: the checkpoint's).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Window crops per forward pass (bounds memory).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
CohortOpt = Annotated[Optional[Path], typer.Option("--cohort", help=COHORT_HELP)]
MinLrOpt = Annotated[float, typer.Option("--min-lr", help=MIN_LR_HELP)]
LrFromOpt = Annotated[str, typer.Option("--lr-from", help=LR_FROM_HELP)]
ThresholdOpt = Annotated[Optional[float], typer.Option("--threshold", help=THRESHOLD_HELP)]
RankOpt = Annotated[str, typer.Option("--rank", help=RANK_HELP)]

# The streaming scan (fpt identify / fpt embed with --jsonl or --csv-file), see fpt.scan.
JsonlOpt = Annotated[Optional[Path], typer.Option(
    "--jsonl", help="Write one JSON record per image to FILE as the scan goes (chunked, fsync'ed; see docs/scaling.md).")]
CsvFileOpt = Annotated[Optional[Path], typer.Option(
    "--csv-file", help="Write one CSV row per image to FILE as the scan goes (like --jsonl).")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue the scan in FILE: skip images already there (same path and sha256), append the rest.")]
WorkersOpt = Annotated[int, typer.Option(
    "--workers", min=0, help="Decoding processes for --jsonl/--csv-file scans (0: decode in the main process).")]
FlushEveryOpt = Annotated[int, typer.Option(
    "--flush-every", min=1, help="Records per fsync'ed chunk: a killed scan loses at most this many.")]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", help="Scan only part i of n (0-based) into FILE.rank<i>-of-<n>; join them with `fpt scan merge FILE`.")]

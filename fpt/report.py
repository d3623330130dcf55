"""Shared output helpers: Rich tables for people, JSON for programs, progress on stderr.

Every command prints results through this module so that the look is uniform and so that
``--json`` output on stdout is never interleaved with progress bars or warnings (those go to
``err_console`` on stderr).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# highlight=False: numbers in tables must not be recoloured by Rich's repr highlighter.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    """One warning line on stderr (never on stdout, which may carry JSON)."""
    err_console.print(f"[yellow]warning:[/yellow] {message}", markup=True, soft_wrap=True)


def format_value(value: Any, digits: int = 4) -> str:
    """Human rendering of one table cell: floats to ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        import numpy as np

        if isinstance(value, np.generic):
            value = value.item()
    except ImportError:  # pragma: no cover - numpy is a hard dependency
        pass
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return str(value)


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    console_: Console | None = None,
    caption: str | None = None,
) -> Table:
    """Print a Rich table; cells go through :func:`format_value`. Returns the table."""
    table = Table(title=title, caption=caption, show_lines=False)
    for i, col in enumerate(columns):
        # Left-align the first (label) column, right-align the rest (mostly numbers).
        table.add_column(str(col), justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(format_value(v) for v in row))
    (console_ or console).print(table)
    return table


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy/torch values, Paths, sets and tuples to JSON-safe values.

    Non-finite floats become ``None`` so the output is strict JSON (``NaN`` is not JSON).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    try:
        import numpy as np

        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist())
        if isinstance(obj, np.generic):
            return to_jsonable(obj.item())
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return to_jsonable(obj.detach().cpu().tolist())
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return str(obj)


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def print_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (plain write, no Rich markup or wrapping)."""
    sys.stdout.write(dumps_json(obj) + "\n")
    sys.stdout.flush()


def progress(*, transient: bool = False, disable: bool = False) -> Progress:
    """A Rich progress bar on stderr with count, elapsed time and ETA.

    Use as ``with progress() as p: task = p.add_task("embedding", total=n); p.advance(task)``.
    """
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=disable,
    )


def save_figure(fig: Any, path: str | Path, *, dpi: int = 120, tight: bool = True) -> Path:
    """Save a matplotlib figure atomically as PNG (or any format the suffix names), then close it.

    Import matplotlib through :func:`pyplot` so the Agg backend is selected (no display needed).
    ``tight`` crops to the drawn content (an extra layout pass, ~2x slower); pass ``False`` for
    figures already laid out with ``fig.tight_layout()``.
    """
    from fpt.storage import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight" if tight else None, format=fmt)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the non-interactive Agg backend forced."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- decisions: cohort, LR, verbal scale


def render_cohort(summary: Mapping[str, Any], title: str) -> None:
    """A cohort's size, extractor and in-sample calibration quality per (probe, model) set size."""
    console.print(f"{title}: {summary['models']} models, {summary['images']} images, extractor "
                  f"{str(summary['extractor_sha256'])[:12]}", markup=False)
    cal = summary.get("calibration")
    if not cal:
        console.print("no LR calibration stored", markup=False)
        return
    print_table(f"LR calibration (adaptive S-norm, top-{cal['top_n']}), fitted on cohort trials",
                ["probe images", "model images", "method", "Cllr", "Cllr_min", "targets", "non-targets"],
                [[r["n_probe"], r["n_model"], r["calibrator"].get("method"), r["cllr"], r["cllr_min"], r["targets"],
                  r["non_targets"]] for r in cal["sizes"]],
                caption="in-sample on the cohort; fpt eval measures it on held-out labelled folders")


def identification_record(r: Any) -> dict[str, Any]:
    """The one per-image record of ``fpt identify --json`` (and of any streaming output)."""
    rec: dict[str, Any] = {"path": r.path, "model": r.model, "best_model": r.best_model, "score": r.score,
                           "score_norm": r.score_norm, "log10_lr": r.log10_lr, "verbal": r.verbal,
                           "low_confidence": r.low_confidence}
    rec["top"] = [{"model": m, "score": s,
                   "score_norm": r.top_norm[i] if i < len(r.top_norm) else None,
                   "log10_lr": r.top_log10_lr[i] if i < len(r.top_log10_lr) else None}
                  for i, (m, s) in enumerate(r.top)]
    return rec


def format_lr(log10_lr: float | None) -> str:
    """``log10 LR 1.84 (LR 69)``; LRs beyond 10^+-6 shown as powers of ten."""
    if log10_lr is None or not math.isfinite(log10_lr):
        return "-"
    lr = 10.0 ** log10_lr
    shown = f"{lr:.3g}" if 1e-3 <= lr <= 1e6 else f"10^{log10_lr:.1f}"
    return f"{log10_lr:+.2f} (LR {shown})"


def cohort_summary(c: Any) -> dict[str, Any]:
    """JSON-able summary of a :class:`fpt.cohort.Cohort`."""
    cal = c.calibration
    return {"path": str(c.path) if c.path else None, "extractor_sha256": c.extractor_sha256, "models": c.size,
            "images": int(c.embeddings.shape[0]), "created": c.created, "source": c.source,
            "calibration": cal.to_dict() if cal else None}


def gallery_check_messages(chk: Any) -> tuple[str | None, list[str]]:
    """(expected-rates line or None, warning lines) for an :class:`fpt.attribution.GalleryCheck`."""
    rates = None
    if chk.expected_frr is not None:
        rule = (f"log10 LR >= {chk.level:g}" if chk.rule == "lr" else f"cosine >= {chk.level:.4f}")
        far = "n/a (one model)" if chk.expected_far is None else f"{chk.expected_far:.1%}"
        rates = (f"decision {rule}: expected false-accept rate {far}, false-reject rate {chk.expected_frr:.1%} "
                 f"(leave-one-out over the gallery's own images)")
    warns = []
    for name, (rej, n) in sorted(chk.disagreeing.items()):
        warns.append(f"'{name}': {rej} of its {n} images are rejected against its own fingerprint "
                     f"(leave-one-out): the images disagree - the folder may mix sources or post-processing")
    for c in chk.confusions:
        taken = ("" if c.accepted_share is None else
                 f", and {c.accepted_share:.0%} would be attributed to '{c.other}' if '{c.model}' were not enrolled")
        warns.append(f"'{c.model}' and '{c.other}' are not separable by this extractor: {c.share:.0%} of "
                     f"'{c.model}' images score at least as high against '{c.other}' as against their own model"
                     f"{taken} (fingerprint cosine {c.fingerprint_cosine:.3f}; e.g. a shared decoder)")
    return rates, warns

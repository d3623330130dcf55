"""Shared output helpers: Rich tables for people, JSON for programs, progress on stderr.

Every command prints results through this module so that the look is uniform and so that
``--json`` output on stdout is never interleaved with progress bars or warnings (those go to
``err_console`` on stderr).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
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
from rich.text import Text

# C0/C1 control characters (ESC, newline, tab, DEL, CSI ...): a file or model name holding them
# must not move the cursor, recolour the terminal or split a table row.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def visible(text: object, *, keep_newlines: bool = False) -> str:
    """``str(text)`` with control characters written as Python escapes (``\\x1b``, ``\\n``).

    ``keep_newlines`` leaves line breaks alone: for whole messages, whose lines fpt composed.
    """
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(lambda m: repr(m.group())[1:-1], str(text))


def literal(text: object) -> str:
    """A user string (path, model name, meta value) made safe to embed in Rich markup.

    Control characters become visible escapes and markup is escaped, so ``[bold red]x.png`` or
    ``[/]`` print as typed. Use it for user strings inside ``print(..., markup=True)``.
    """
    return escape(visible(text))


class _LiteralConsole(Console):
    """A console that prints every string literally: no markup, no emoji codes, no repr
    highlighting, control characters visible. Markup is only parsed where a call asks for it
    with ``markup=True`` (and then user strings inside must go through :func:`literal`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:  # type: ignore[override]
        # Line breaks survive here (multi-line reports); user strings in table cells lose theirs
        # in print_table, and literal() escapes them too.
        return super().render_str(visible(text, keep_newlines=True), **kwargs)


console = _LiteralConsole()
err_console = _LiteralConsole(stderr=True)


def warn(message: str) -> None:
    """One warning line on stderr (never on stdout, which may carry JSON); printed literally."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True, soft_wrap=True)


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
    """Print a Rich table; cells go through :func:`format_value`. Returns the table.

    A column whose cells are all numbers never wraps; text columns fold instead (keeping up to 12
    characters a line). When even that does not fit the terminal (narrow, or a pipe at 80
    columns) each row is printed as its own two-column block, so no number is split over lines.
    """
    out = console_ or console
    cells = [[visible(format_value(v)) for v in row] for row in rows]
    numeric, widths = [], []
    for i, col in enumerate(columns):
        num = bool(cells) and all(i < len(r) and _is_number_cell(r[i]) for r in cells)
        longest = max((len(r[i]) for r in cells if i < len(r)), default=0)
        header = max((len(w) for w in str(col).split()), default=0)
        numeric.append(num)
        # a number column does not wrap, its header included: it needs the whole header's width
        widths.append(max(longest, len(str(col))) if num else max(min(longest, 12), min(header, 12)))
    if sum(widths) + 3 * len(columns) + 1 > out.width and len(columns) > 2:
        table = Table(title=title, caption=caption, show_header=False)
        table.add_column(justify="left", overflow="ellipsis", no_wrap=True, max_width=max(8, out.width // 2 - 4))
        table.add_column(justify="left", overflow="fold", min_width=max(widths[i] for i in range(len(columns))
                                                                         if numeric[i]) if any(numeric) else None)
        for k, row in enumerate(cells):
            if k:
                table.add_section()
            for col, cell in zip(columns, row):
                table.add_row(str(col), cell)
        out.print(table)
        return table
    table = Table(title=title, caption=caption, show_lines=False)
    for i, col in enumerate(columns):
        # Left-align the first (label) column, right-align the rest (mostly numbers).
        table.add_column(str(col), justify="left" if i == 0 else "right", overflow="fold", no_wrap=numeric[i],
                         min_width=widths[i])
    for row in cells:
        table.add_row(*row)
    out.print(table)
    return table


def _is_number_cell(text: str) -> bool:
    """A cell that :func:`format_value` made from a number (or a missing one)."""
    if text in ("-", "nan", "inf", "-inf"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


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


class _DescriptionColumn(TextColumn):
    """The task description, literally (descriptions hold model and file names)."""

    def __init__(self) -> None:
        super().__init__("{task.description}", style="progress.description", markup=False)

    def render(self, task: Any) -> Text:
        return Text(visible(task.description), style=self.style)


def progress(*, transient: bool = False, disable: bool = False) -> Progress:
    """A Rich progress bar on stderr with count, elapsed time and ETA.

    Use as ``with progress() as p: task = p.add_task("embedding", total=n); p.advance(task)``.
    """
    return Progress(
        SpinnerColumn(),
        _DescriptionColumn(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        # Off a terminal a transient bar draws nothing but leaves a stray blank line on stderr.
        disable=disable or (transient and not err_console.is_terminal),
    )


@contextlib.contextmanager
def step_progress(label: str, total: int, completed: int = 0, *, disable: bool = False) -> Iterator[Callable[[int, int, str], None]]:
    """A bar on stderr for a loop of known length with a line of status (loss, rate...).

    Yields ``on_step(done, total, info)``, the callback long-running core functions accept. A
    resumed loop's first call starts the bar at ``done - 1``, so the rate (and ETA) counts only the
    steps run now.
    """
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, disable=disable) as bar:
        task = bar.add_task(label, total=total, completed=completed, info="")
        started = [False]

        def on_step(done: int, n: int, info: str = "") -> None:
            if not started[0] and done - 1 > completed:
                bar.reset(task, total=n, completed=done - 1)
            started[0] = True
            bar.update(task, completed=done, total=n, info=info)

        yield on_step


@contextlib.contextmanager
def pool_progress(out: str | Path) -> Iterator[tuple[Callable[[int, int], None], Callable[[Any], None]]]:
    """A bar for ``fpt synth``'s pool build. Yields the ``(on_start, on_done)`` callbacks of
    :func:`fpt.synth.pool.build_pool`: models still to train (and how many the pool already
    holds), then one finished model record at a time."""
    with progress() as bar:
        task = bar.add_task("training", total=None)

        def on_start(todo: int, skipped: int) -> None:
            if skipped:
                err_console.print(f"resuming: {skipped} models already in {literal(out)}")
            bar.update(task, total=todo)

        def on_done(rec: Any) -> None:
            mark = "ok" if rec.reached_target else "cap"
            bar.update(task, advance=1, description=f"{rec.model_id} {mark} {rec.final_loss:.4f}")

        yield on_start, on_done


def render_pool_summary(rows: list[Mapping[str, Any]], title: str) -> None:
    """``fpt synth``'s per-group table of a pool (fpt.synth.pool.summarise rows)."""
    cols = ["group", "models", "archs", "reached", "learned", "loss p10", "loss p50", "loss p90",
            "steps", "s/model", "CPU-s"]
    print_table(title, cols, [[r["group"], r["models"], r["archs"], f"{100 * r['reached']:.1f}%",
                               f"{100 * r['learned']:.1f}%", r["loss_p10"], r["loss_p50"], r["loss_p90"],
                               r["steps_p50"], r["wall_s_p50"], r["wall_s_total"]] for r in rows],
                caption="reached: share at target; learned: share under half a constant output's MSE "
                        "(fpt train --only-learned leaves the rest out); loss: FD = reconstruction MSE (target 0.005), "
                        "grid = mean |noise| (target 0.005); steps, s/model: medians; CPU-s: total")


def render_pool_ffd(result: Any, pool: str | Path, real: str | Path, *, n: int, size: int, residual: str) -> None:
    """``fpt synth ffd``'s tables (a fpt.metrics.ffd.PoolFFD)."""
    print_table(f"FFD of {Path(pool).name} vs {len(result.real.names)} real models in {real}",
                ["synthetic set", "models", "FFD"], [[r["set"], r["models"], r["ffd"]] for r in result.rows],
                caption=f"{n} images/model, {size}-px centre crops, {residual} residual, log-AI min-max")
    if result.per_model:
        print_table(None, ["real model", "L2 to synthetic mean"],
                    [[r["real_model"], r["l2_to_pool_mean"]] for r in result.per_model])


def _rounded(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items() if k != "lr"}
    return round(v, 4) if isinstance(v, float) else v


def render_train_result(result: Any) -> None:
    """``fpt train``'s held-out table (a fpt.extractor.train.TrainResult)."""
    cols = ["held-out architectures", f"crops: extractor ({result.embed_from})", "crops: azimuthal-integral baseline"]
    if result.whitened:
        cols += ["whole images: extractor", "whole images: + whitening (saved)"]
    rows = []
    for key, label in (("auc", "verification AUC (N_S=1)"), ("id_acc_10shot", "10-shot identification acc")):
        w = [result.unwhitened.get(key), result.whitened.get(key)] if result.whitened else []
        rows.append([label, result.chosen.get(key), result.baseline.get(key), *w])
    print_table(f"fpt train: {result.out}  (sha256 {result.sha256[:12]})", cols, rows)
    console.print(f"{result.steps} steps in {result.wall_s:.0f} s ({result.images_per_s:.0f} img/s); "
                  f"{result.n_train_models} training models, {result.n_val_models} held-out models", markup=False)


def render_extractor_info(info: Mapping[str, Any]) -> None:
    """``fpt extractor-info``'s table (fpt.extractor.checkpoint.Extractor.describe())."""
    t = Table(title=f"extractor {literal(info['path'])}", show_header=False)
    t.add_column("field")
    t.add_column("value")
    t.add_row("sha256", info["sha256"])
    n, p, c = info["network"], info["preprocessing"], info["training"]
    t.add_row("network", f"{n['backbone']} x{n['width']} ({n['stem']} stem), {info['embedding_dim']}-d embedding "
              f"from the {n.get('embed_from', 'projection')}")
    t.add_row("preprocessing", f"{p['residual']} residual -> {'luma' if p['grey'] else 'per-channel RGB'} "
              f"{p['spectrum']} DFT, {p['crop_size']}px crops, {p['windows']}x{p['windows']} windows")
    t.add_row("whitening", (f"yes: within-model covariance of {c.get('whiten_models', '?')} training models, "
                            f"shrinkage {c.get('whiten_shrinkage', '?')}") if info["whitening"] else "none")
    if c.get("untrained"):
        t.add_row("training", "UNTRAINED placeholder")
    else:
        # validation_whitening: held-out archs on held-out photos, without / with whitening
        labels = {"heldout_archs": "held-out archs", "validation_whitening": "whole images"}
        for key in ("preset", "pool", "residual", "steps_done", "P", "K", "lr", "seed", "world_size", "wall_s",
                    "train_models", "heldout_archs", "validation", "baseline", "validation_whitening"):
            if key not in c:
                continue
            v = c[key]
            if key == "heldout_archs":
                v = f"{len(v)} architectures (validation only)"
            t.add_row(labels.get(key, key), literal(json.dumps(_rounded(v)) if isinstance(v, (dict, list)) else str(v)))
    console.print(t)


def score_digits(*values) -> int:
    """Decimals that keep cosine scores apart: embeddings of some extractors crowd near 1."""
    vals = [abs(float(v)) for v in values if v is not None]
    return 6 if vals and max(vals) >= 0.999 else 4


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


def print_scan_summary(s: Any) -> None:
    """Human summary of a streamed scan (:class:`fpt.scan.ScanSummary`), counted from its file."""
    if s.inputs or s.new or s.skipped:
        err_console.print(f"{s.inputs} input file(s): {s.new} recorded now, {s.skipped} already in the output"
                          + (f", {s.rescanned} changed on disk and re-scanned" if s.rescanned else "")
                          + ("; a torn last record of a killed run was cut off" if s.dropped_torn else ""),
                          markup=False, highlight=False, soft_wrap=True)
    if s.part and s.out != s.part:
        console.print(f"part {s.shard[0]} of {s.shard[1]}: {s.part}", markup=False)
    console.print(f"{s.out}: {s.records} record(s), {s.images} image(s), {s.failed} unreadable, "
                  f"{s.low_confidence} low-confidence", markup=False)
    if s.models:
        print_table(None, ["model", "images"], [[m, n] for m, n in s.models.items()])  # cells print literally


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


#: warnings of each kind a gallery check prints (worst first); JSON keeps the rest
CHECK_WARNINGS = 20


def gallery_check_messages(chk: Any) -> tuple[str | None, list[str]]:
    """(expected-rates line or None, warning lines) for an :class:`fpt.attribution.GalleryCheck`."""
    rates = None
    if chk.expected_frr is not None:
        rule = (f"log10 LR >= {chk.level:g}" if chk.rule == "lr" else f"cosine >= {chk.level:.4f}")
        far = "n/a (one model)" if chk.expected_far is None else f"{chk.expected_far:.1%}"
        rates = (f"decision {rule}: expected false-accept rate {far}, false-reject rate {chk.expected_frr:.1%} "
                 f"(leave-one-out over the gallery's own images)")
    if chk.loo_accuracy is not None:
        how = ("whitened ranking, each image ranked by the gallery without its fold of images"
               if chk.ranked_by == "whitened" else "cosine ranking, leave-one-out")
        acc = f"expected top-1 accuracy for enrolled models {chk.loo_accuracy:.1%} ({how})"
        rates = acc if rates is None else f"{rates}\n{acc}"
    warns = []
    disagreeing = sorted(chk.disagreeing.items(), key=lambda kv: (-kv[1][0] / kv[1][1], kv[0]))
    for name, (rej, n) in disagreeing[:CHECK_WARNINGS]:
        warns.append(f"'{name}': {rej} of its {n} images are rejected against its own fingerprint "
                     f"(leave-one-out): the images disagree - the folder may mix sources or post-processing")
    if len(disagreeing) > CHECK_WARNINGS:
        warns.append(f"... and {len(disagreeing) - CHECK_WARNINGS} more models whose images disagree "
                     "(`fpt gallery calibrate --json` lists them all)")
    confusions = sorted(chk.confusions, key=lambda c: -c.share)
    for c in confusions[:CHECK_WARNINGS]:
        taken = ("" if c.accepted_share is None else
                 f"{c.accepted_share:.0%} would be attributed to '{c.other}' if '{c.model}' were not enrolled")
        cos = f"fingerprint cosine {c.fingerprint_cosine:.3f}"
        if not c.ranked_apart:
            warns.append(f"'{c.model}' and '{c.other}' are not separable by this extractor: {c.share:.0%} of "
                         f"'{c.model}' images rank '{c.other}' at least as high as their own model"
                         f"{', and ' + taken if taken else ''} ({cos}; e.g. a shared decoder)")
        else:  # flagged only because the decision would accept them for the other model
            warns.append(f"'{c.model}' images are told apart from '{c.other}' while both are enrolled ({c.share:.0%} "
                         f"rank '{c.other}' at least as high as their own), but {taken}: images of an unenrolled generator like "
                         f"'{c.model}' may be attributed to '{c.other}' ({cos})")
    if chk.confused_pairs > min(len(confusions), CHECK_WARNINGS):
        warns.append(f"... {chk.confused_pairs} pairs of models flagged in all (`fpt gallery calibrate --json` "
                     f"lists the worst {len(confusions)}, up to {chk.kept_per_model} per model)")
    return rates, warns

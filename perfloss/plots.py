"""Figures written to files with matplotlib (the ``plot`` extra: ``pip install perfloss[plot]``).

Every function builds a ``matplotlib.figure.Figure`` of its own (no pyplot state, no window, no
display needed: files render with Agg), writes it to ``path`` (the format from the suffix: .png,
.pdf, .svg) and returns it, so callers and tests can read its titles, labels and legends.
matplotlib is imported when a function is called, never by ``import perfloss``.
"""
import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

Curves = Dict[str, Tuple[Sequence, Sequence[float]]]


def require_matplotlib():
    """matplotlib.pyplot, or ImportError saying how to install it. If pyplot was not imported yet,
    matplotlib is switched to the Agg backend first (files only: never a window or a display)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("perfloss's plots need matplotlib: pip install perfloss[plot]") from e
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


@dataclass
class Panel:
    """One axes of a figure: ``curves`` maps each legend label to (xs, ys).

    kind ``"line"``: xs are numbers, one line (with markers when it has few points) per label.
    kind ``"bar"``: xs are category names; grouped bars, one bar per label in each category.
    ``xticks``: put the x ticks (plain number labels) at these values, e.g. the batch sizes of a sweep.
    ``dashed``: labels of lines drawn dashed (reference lines).
    """
    curves: Curves
    title: str
    xlabel: str
    ylabel: str
    logy: bool = False
    logx: bool = False
    kind: str = "line"
    xticks: Optional[Sequence[float]] = None
    dashed: Sequence[str] = ()


def _check_curves(curves: Curves, where: str) -> None:
    if not isinstance(curves, dict) or not curves:
        raise ValueError(f"{where}: curves must be a non-empty dict label -> (xs, ys), got {curves!r}")
    for label, pair in curves.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or len(pair[0]) != len(pair[1]):
            raise ValueError(f"{where}: curves[{label!r}] must be (xs, ys) of one length")


def _draw_lines(ax, panel: Panel) -> None:
    for label, (xs, ys) in panel.curves.items():
        dashed = label in panel.dashed
        ax.plot(list(xs), [float(y) for y in ys], label=label, linestyle="--" if dashed else "-",
                marker="o" if len(xs) <= 12 and not dashed else None, markersize=4)
    if panel.logx:
        ax.set_xscale("log")
        _plain_log_labels(ax.xaxis)
    if panel.xticks is not None:
        from matplotlib.ticker import NullFormatter
        ax.set_xticks(list(panel.xticks), [f"{t:g}" for t in panel.xticks])
        ax.xaxis.set_minor_formatter(NullFormatter())


def _plain_log_labels(axis) -> None:
    """Log-axis tick labels as plain numbers (0.2, 0.3, 500) instead of 2 x 10^-1; the ticks between
    powers of ten are labelled only when the axis spans under 1.5 decades (else they would crowd)."""
    from matplotlib.ticker import FuncFormatter

    def minor(value, _):
        lo, hi = axis.get_view_interval()
        return f"{value:g}" if lo > 0 and math.log10(hi / lo) < 1.5 else ""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _draw_bars(ax, panel: Panel) -> None:
    categories = list(dict.fromkeys(c for xs, _ in panel.curves.values() for c in xs))
    width = 0.8 / len(panel.curves)
    for k, (label, (xs, ys)) in enumerate(panel.curves.items()):
        value = dict(zip(xs, ys))
        positions = [i + (k - (len(panel.curves) - 1) / 2) * width for i, c in enumerate(categories) if c in value]
        heights = [float(value[c]) for c in categories if c in value]
        bars = ax.bar(positions, heights, width, label=label)
        ax.bar_label(bars, labels=[f"{h:.0f}" if abs(h) >= 100 else f"{h:.3g}" for h in heights], fontsize=7)
    ax.set_xticks(range(len(categories)), categories)


def plot_panels(path, panels: Sequence[Panel], *, title: Optional[str] = None):
    """Write a figure of ``panels`` side by side (each titled, labelled, with a legend) and return it."""
    if not panels:
        raise ValueError("plot_panels: panels must not be empty")
    for k, panel in enumerate(panels):
        _check_curves(panel.curves, f"panel {k} ({panel.title!r})")
        if panel.kind not in ("line", "bar"):
            raise ValueError(f"panel {k}: kind must be 'line' or 'bar', got {panel.kind!r}")
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        (_draw_bars if panel.kind == "bar" else _draw_lines)(ax, panel)
        if panel.logy:
            ax.set_yscale("log")
            _plain_log_labels(ax.yaxis)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(os.fspath(path), dpi=120)
    return fig


def plot_curves(path, curves: Curves, *, title: str, xlabel: str, ylabel: str, logy: bool = False):
    """Write one line per label of ``curves`` (label -> (xs, ys)) with a legend, axis labels and a
    title to ``path``; return the Figure."""
    return plot_panels(path, [Panel(curves, title, xlabel, ylabel, logy=logy)])


def image_grid(path, columns: Dict[str, torch.Tensor], *, title: Optional[str] = None):
    """Write a grid of images to ``path`` and return the Figure: one column per key of ``columns``
    (labelled with the key), one row per sample. Each value is a (B, 3, H, W) or (B, 1, H, W) tensor in
    [0, 1] (clamped); all have the same B, sizes may differ between columns (e.g. a low-resolution
    input beside its upscaled output). Pixels are drawn unsmoothed (nearest)."""
    if not isinstance(columns, dict) or not columns:
        raise ValueError("image_grid: columns must be a non-empty dict label -> (B, 3, H, W) tensor")
    rows = None
    for label, t in columns.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] not in (1, 3):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"image_grid: column {label!r} must be a (B, 3, H, W) or (B, 1, H, W) tensor, got {shape}")
        if rows is not None and t.shape[0] != rows:
            raise ValueError(f"image_grid: column {label!r} has {t.shape[0]} images, the first column {rows}")
        rows = t.shape[0]
    require_matplotlib()
    from matplotlib.figure import Figure

    side = max(max(t.shape[-2:]) for t in columns.values())
    cell = min(4.0, max(1.6, side / 100))  # inches: small images drawn larger, large ones at ~100 dpi
    fig = Figure(figsize=(cell * len(columns), cell * rows + (0.5 if title else 0.2)), layout="constrained")
    axes = fig.subplots(rows, len(columns), squeeze=False)
    for c, (label, t) in enumerate(columns.items()):
        images = t.detach().float().cpu().clamp(0, 1)
        for r in range(rows):
            ax = axes[r][c]
            if images.shape[1] == 3:
                ax.imshow(images[r].permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                ax.imshow(images[r, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=10)
    if title:
        fig.suptitle(title)
    fig.savefig(os.fspath(path), dpi=100)
    return fig


def heatmap(path, values: Sequence[Sequence[Optional[float]]], *, rows: Sequence[str], columns: Sequence[str],
            title: str, xlabel: str, ylabel: str, colorbar_label: str,
            cell_text: Optional[Sequence[Sequence[str]]] = None):
    """Write a heat-map of ``values`` (one list per row; None: no value, drawn blank) with the ``rows`` and
    ``columns`` as tick labels, axis labels, a colour bar and a title, and return the Figure. Each cell
    is annotated with its ``cell_text`` (default: the value to 3 significant digits)."""
    if not rows or not columns or len(values) != len(rows) or any(len(row) != len(columns) for row in values):
        raise ValueError(f"heatmap: values must be {len(rows)} rows (one per row label) of {len(columns)} values "
                         f"(one per column label)")
    if cell_text is not None and (len(cell_text) != len(rows) or any(len(r) != len(columns) for r in cell_text)):
        raise ValueError("heatmap: cell_text must have the shape of values")
    require_matplotlib()
    import numpy as np
    from matplotlib.figure import Figure

    grid = np.ma.masked_invalid(np.array([[np.nan if v is None else float(v) for v in row] for row in values]))
    fig = Figure(figsize=(1.6 + 1.5 * len(columns), 1.4 + 0.55 * len(rows)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_xticks(range(len(columns)), list(columns))
    ax.set_yticks(range(len(rows)), list(rows))
    low, high = (grid.min(), grid.max()) if grid.count() else (0.0, 0.0)
    blank = np.ma.getmaskarray(grid)
    for r in range(len(rows)):
        for c in range(len(columns)):
            if blank[r, c]:
                continue
            text = cell_text[r][c] if cell_text is not None else f"{grid[r, c]:.3g}"
            dark = high > low and (grid[r, c] - low) / (high - low) < 0.5  # viridis is dark at its low end
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.savefig(os.fspath(path), dpi=120)
    return fig

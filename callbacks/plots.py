"""Matplotlib figures for the callbacks, drawn off-screen (Agg canvas, no pyplot global state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float = 6.0, height: float = 4.0) -> Figure:
    """A figure on its own Agg canvas: safe in worker processes and headless machines."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def draw_heatmap(ax, matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
                 cbar_label: str, vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis",
                 annotate: bool = True, fmt: str = "{:.2f}"):
    """Draw a labelled heatmap with a colour bar on ``ax``; returns the image."""
    matrix = np.asarray(matrix, dtype=float)
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto", origin="upper")
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    colorbar = ax.figure.colorbar(image, ax=ax)
    colorbar.set_label(cbar_label)
    if annotate and matrix.size <= 144:
        finite = matrix[np.isfinite(matrix)]
        middle = (np.nanmin(finite) + np.nanmax(finite)) / 2 if finite.size else 0.0
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, fmt.format(value) if np.isfinite(value) else "-", ha="center", va="center",
                    fontsize=7, color="black" if value > middle else "white")
    return image


def heatmap_figure(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *, title: str,
                   xlabel: str, ylabel: str, cbar_label: str, vmin: float | None = None,
                   vmax: float | None = None) -> Figure:
    """One labelled heatmap (e.g. layer x layer similarity)."""
    size = max(4.0, 0.6 * max(len(row_labels), len(col_labels)) + 2.5)
    figure = new_figure(size + 1.0, size)
    ax = figure.add_subplot()
    draw_heatmap(ax, matrix, row_labels, col_labels, cbar_label=cbar_label, vmin=vmin, vmax=vmax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return figure


def curves_figure(x: Sequence[float], series: Mapping[str, Sequence[float]], *, title: str, xlabel: str,
                  ylabel: str, ylim: tuple[float, float] | None = None) -> Figure:
    """Several named curves over a shared x-axis, with a legend (e.g. similarity per layer over steps)."""
    figure = new_figure()
    ax = figure.add_subplot()
    for name, values in series.items():
        ax.plot(list(x)[: len(values)], list(values), marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return figure

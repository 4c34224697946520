"""The paper's figures from analysis (and trajectory) files: matplotlib's object API, no display needed.

- ``trajectory_figure`` (paper Figures 1-6): training loss and mean gradient correlation over the run,
  then the h x h gradient correlation matrix of every analysed window.
- ``sign_shift_figure`` (paper Figure 8): chosen windows, each cell annotated with the correlation and the
  percentage of gradient entries with opposite signs.

The ``build_*`` functions return the ``Figure``; the others save it as PNG and PDF, atomically.
"""

from __future__ import annotations

import matplotlib.colors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np

from zigzag import store
from zigzag.analysis import RANDOM, SMOOTH, ZIGZAG
from zigzag.errors import ZigzagError

CMAP = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.8")
NORM = matplotlib.colors.Normalize(vmin=-1.0, vmax=1.0)
PHASE_COLOURS = {SMOOTH: ("smooth", "#c7e9c0"), ZIGZAG: ("zigzag", "#fcbba1"), RANDOM: ("random", "#d9d9d9")}
DIVERGED = "#d62728"
DPI = 150


def _diverged_at(attrs: dict, status_key: str) -> int | None:
    """The step a diverged run stopped at, or None for a run that did not diverge."""
    if attrs.get(status_key) != "diverged":
        return None
    return int(attrs.get("diverged_at", -1))


def _matrix_panel(ax, corr: np.ndarray, opposite: np.ndarray | None, k: int, title: str) -> None:
    """One h x h window at step k: colour = correlation in [-1, 1], each cell annotated with its value
    (and, with ``opposite``, the percentage of entries with opposite signs); grey "not reached" if all NaN."""
    h = len(corr)
    ax.set_title(title, fontsize=10)
    if np.isnan(corr).all():
        ax.set_facecolor("0.85")
        ax.set_box_aspect(1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, "not reached", ha="center", va="center", transform=ax.transAxes, fontsize=11,
                color="0.3")
        return
    ax.imshow(corr, cmap=CMAP, norm=NORM)
    fontsize = min(11.0, max(5.0, 45.0 / h))
    for a in range(h):
        for b in range(h):
            value = corr[a, b]
            if not np.isfinite(value):
                text = "n/a"
            elif opposite is None:
                text = f"{round(value, 2) + 0.0:.2f}"
            else:
                text = f"{round(value, 2) + 0.0:.2f}\n{100 * opposite[a, b]:.0f}%"
            colour = "white" if np.isfinite(value) and abs(value) > 0.6 else "black"
            ax.text(b, a, text, ha="center", va="center", fontsize=fontsize, color=colour)
    labels = [str(k + i) for i in range(h)]
    ax.set_xticks(range(h), labels, fontsize=8, rotation=45 if len(labels[-1]) * h > 20 else 0)
    ax.set_yticks(range(h), labels, fontsize=8)
    ax.tick_params(length=2)


def _colourbar(fig, axes) -> None:
    fig.colorbar(ScalarMappable(norm=NORM, cmap=CMAP), ax=axes, shrink=0.85, label="gradient correlation")


def _phase_runs(phase: np.ndarray, value: int) -> list[tuple[float, float]]:
    """(start, width) of each maximal run of steps in ``value``, each step covering [k - 0.5, k + 0.5]."""
    edges = np.diff(np.concatenate([[0], (phase == value).astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(s - 0.5, e - s) for s, e in zip(starts, ends)]


def build_trajectory_figure(trajectory: str, analysis: str, title: str, label: str | None = None) -> Figure:
    """Paper Figure 1: loss and mean gradient correlation (top), one correlation matrix per window (bottom).

    ``label`` names the run in the curves' legends.
    """
    traj, an = store.read_trajectory(trajectory), store.read_analysis(analysis)
    unit = "epoch" if traj.config.get("optimizer", "gd") == "gd" else "iteration"
    loss, mean_mu, phase = traj.steps["loss"], an["mean_mu"], an["phase"]
    steps = np.arange(len(loss))
    windows, corr = an["windows/steps"], an["windows/corr"]
    diverged_at = _diverged_at(traj.attrs, "status")

    n = max(len(windows), 1)
    fig = Figure(figsize=(max(10.0, 3.3 * n + 1.0), 7.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 1.15])
    ax_loss, ax_mu = top.subplots(1, 2)

    ax_loss.plot(steps, loss, color="tab:blue", lw=1.2, label=label)
    finite = np.isfinite(loss)
    if finite.any() and (loss[finite] > 0).all():
        ax_loss.set_yscale("log")
    marked = windows[windows < len(loss)]
    marked = marked[np.isfinite(loss[marked])]
    if len(marked):
        ax_loss.plot(marked, loss[marked], "o", color="red", ms=6, clip_on=False, label=f"window {unit}s")
    ax_loss.set(title="training loss", xlabel=unit, ylabel="loss")

    for value, (name, colour) in PHASE_COLOURS.items():
        ax_mu.broken_barh(_phase_runs(phase, value), (-1.05, 2.1), facecolors=colour, alpha=0.6, lw=0)
    ax_mu.axhline(0.0, color="black", lw=0.6)
    ax_mu.plot(steps[: len(mean_mu)], mean_mu, color="tab:blue", lw=1.2, label=label)
    ax_mu.set(title=f"mean gradient correlation (h = {an['attrs']['h']})", xlabel=unit, ylabel="mean correlation",
              ylim=(-1.05, 1.05))
    phase_handles = [Patch(facecolor=colour, alpha=0.6, label=name)
                     for value, (name, colour) in PHASE_COLOURS.items() if (phase == value).any()]

    suptitle, colour = title, "black"
    if diverged_at is not None:
        suptitle, colour = f"{title}\nDIVERGED at step {diverged_at}", DIVERGED
        for ax in (ax_loss, ax_mu):
            ax.axvline(diverged_at, color=DIVERGED, ls="--", lw=1.2, label="diverged")
    for ax in (ax_loss, ax_mu):
        ax.set_xlim(-0.5, max(len(loss), 2) - 0.5)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize=8)
    mu_handles = ax_mu.get_legend_handles_labels()[0] + phase_handles
    if mu_handles:
        ax_mu.legend(handles=mu_handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(suptitle, color=colour, fontsize=13)

    matrix_axes = bottom.subplots(1, n, squeeze=False)[0]
    for ax, k, c in zip(matrix_axes, windows, corr):
        _matrix_panel(ax, c, None, int(k), f"{unit} {int(k)}")
    if len(windows):
        _colourbar(bottom, matrix_axes)
    else:
        matrix_axes[0].set_axis_off()
        matrix_axes[0].text(0.5, 0.5, "no windows analysed", ha="center", va="center")
    return fig


def build_sign_shift_figure(panels: list[tuple[str, str, int]], title: str) -> Figure:
    """Paper Figure 8: for each (analysis file, label, step), the window at ``step`` annotated with the
    correlation and the percentage of gradient entries with opposite signs."""
    if not panels:
        raise ZigzagError("sign-shift figure: no panels given; name at least one (analysis, label, step)")
    fig = Figure(figsize=(4.3 * len(panels) + 1.0, 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (path, panel_label, step) in zip(axes, panels):
        an = store.read_analysis(path)
        windows = [int(k) for k in an["windows/steps"]]
        if step not in windows:
            raise ZigzagError(f"{path}: step {step} is not an analysed window (available: "
                              f"{', '.join(map(str, windows)) or 'none'}); add it to the analysis windows")
        e = windows.index(step)
        panel_title = f"{panel_label} (epoch {step})"
        diverged_at = _diverged_at(an["attrs"], "trajectory_status")
        if diverged_at is not None:
            panel_title += f"\nrun DIVERGED at step {diverged_at}"
        _matrix_panel(ax, an["windows/corr"][e], an["windows/opposite"][e], step, panel_title)
        if diverged_at is not None:
            ax.title.set_color(DIVERGED)
    _colourbar(fig, axes)
    fig.suptitle(title, fontsize=13)
    return fig


def _save(fig: Figure, out_png: str, out_pdf: str) -> None:
    """Write PNG and PDF under temporary names beside them; rename both only when both rendered."""
    with store.atomic_output(out_png) as tmp_png, store.atomic_output(out_pdf) as tmp_pdf:
        fig.savefig(tmp_png, format="png", dpi=DPI)
        fig.savefig(tmp_pdf, format="pdf")


def trajectory_figure(trajectory: str, analysis: str, out_png: str, out_pdf: str, title: str,
                      label: str | None = None) -> None:
    """Render ``build_trajectory_figure`` to PNG and PDF."""
    _save(build_trajectory_figure(trajectory, analysis, title, label), out_png, out_pdf)


def sign_shift_figure(panels: list[tuple[str, str, int]], out_png: str, out_pdf: str, title: str) -> None:
    """Render ``build_sign_shift_figure`` to PNG and PDF."""
    _save(build_sign_shift_figure(panels, title), out_png, out_pdf)

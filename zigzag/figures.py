"""The paper's figures from analysis (and trajectory) files: matplotlib's object API, no display needed.

- ``build_trajectory_figure`` (paper Figures 1-6): training loss and mean gradient correlation over the
  run, then the h x h gradient correlation matrix of every analysed window.
- ``build_sign_shift_figure`` (paper Figure 8): chosen windows, each cell annotated with the correlation and
  the percentage of gradient entries with opposite signs, and below each the sign flips of its adjacent pairs
  counted three ways (all entries, entries non-zero in both, weighted by the overlap).
- ``build_warmup_figure`` (Figure 7), ``build_batch_size_figure`` (Figure 9), ``build_schedules_figure``
  (Figure 10): curves against the epoch, each curve one label and one (trajectory, analysis) pair per seed
  (read by ``zigzag/curves.py``); several seeds are drawn as mean +- 1 sample standard deviation.
- ``build_lag1_figure`` (beyond the paper): the correlation of adjacent gradients at every step, curves
  of trajectories alone.
- ``build_sharpness_figure`` (beyond the paper): sharpness against 2/lr and the gradient geometry.
- ``build_divergence_figure`` (beyond the paper): how fast a run and its perturbed twin part.
- ``build_layers_figure`` (beyond the paper): the adjacent-gradient correlation of every layer (``zigzag/layers.py``).
- ``build_phase_diagram`` (beyond the paper): a learning-rate sweep's mean correlation over (step, lr) and its
  zigzag onset against lr (read by ``zigzag/onsets.py``).

The ``build_*`` functions return the ``Figure``. Each figure kind of the workflow names its ``build_*``
function in ``zigzag/figurekinds.py``; ``render`` draws a kind from the inputs its declaration describes
and saves it as PNG and PDF, atomically.
"""

from __future__ import annotations

import warnings

import matplotlib.colors
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from zigzag import store
from zigzag.analysis import RANDOM, SMOOTH, ZIGZAG
from zigzag.curves import GROWTH_UNTIL, Curve, CurveData, growth_rate, load_curve, read_divergence, step_unit
from zigzag.errors import ZigzagError
from zigzag.figurekinds import KINDS

CMAP = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.8")
NORM = matplotlib.colors.Normalize(vmin=-1.0, vmax=1.0)
PHASE_COLOURS = {SMOOTH: ("smooth", "#c7e9c0"), ZIGZAG: ("zigzag", "#fcbba1"), RANDOM: ("random", "#d9d9d9")}
DIVERGED = "#d62728"
DPI = 150


def check_text(text: str, what: str) -> None:
    """One ``ZigzagError`` line unless matplotlib can draw ``text``: a line with an even number of unescaped
    ``$`` is math text (mathtext, e.g. ``lr $\\eta = 0.1$``), whose syntax must parse. A broken one is refused
    before anything is read or drawn, rather than failing half-way through the rendering; ``\\$`` is a dollar."""
    from matplotlib import cbook
    from matplotlib.mathtext import MathTextParser

    for line in text.split("\n"):
        if not cbook.is_math_text(line):
            continue
        try:
            MathTextParser("path").parse(line)
        except ValueError as err:
            reason = str(err).strip().splitlines()[-1]
            raise ZigzagError(f"invalid {what} {text!r}: its math text ($...$) does not parse: {reason}; fix it, "
                              f"or write a literal dollar as \\$") from None


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


def _shade_phases(ax, phase: np.ndarray, labelled: bool = False) -> None:
    """Shade each step by its phase (smooth, zigzag, random) across the correlation's range; with
    ``labelled``, each phase's shading enters the axes' legend."""
    for value, (name, colour) in PHASE_COLOURS.items():
        ax.broken_barh(_phase_runs(phase, value), (-1.05, 2.1), facecolors=colour, alpha=0.6, lw=0,
                       label=name if labelled else None)


def _diverged_title(title: str, diverged_at: int | None, whose: str = "") -> tuple[str, str]:
    """``title`` and its colour: black, or red with a line "<whose>DIVERGED at step k" for a diverged run."""
    if diverged_at is None:
        return title, "black"
    return f"{title}\n{whose}DIVERGED at step {diverged_at}", DIVERGED


def _select_windows(an: store.AnalysisFile, steps: list | None, path: str) -> list[int]:
    """Indices of the analysed windows to draw: every one (``steps`` None), or those at the given steps and,
    for ``"auto"``, those the analysis found itself (``analysis.auto_windows``)."""
    analysed = [int(k) for k in an.window_steps]
    if steps is None:
        return list(range(len(analysed)))
    missing = [k for k in steps if k != "auto" and k not in analysed]
    if missing:
        raise ZigzagError(f"{path}: step(s) {missing} are not analysed windows (available: "
                          f"{', '.join(map(str, analysed)) or 'none'}); add them to the analysis windows")
    return [e for e, (k, role) in enumerate(zip(analysed, an.window_roles))
            if k in steps or ("auto" in steps and role)]


def _no_zigzag_note(zigzag_below: float) -> str:
    """What a trajectory figure says when its run has no zigzag step, and where the zigzag is found."""
    return (f"no zigzag phase in this run\n(mean correlation never below zigzag_below = {zigzag_below:g});\n"
            "the learning rates where it zigzags: the\nlearning-rate phase diagram (all_sweeps)")


def build_trajectory_figure(trajectory: str, analysis: str, title: str, label: str | None = None,
                            steps: list | None = None) -> Figure:
    """Paper Figure 1: loss and mean gradient correlation (top), one correlation matrix per window (bottom).

    ``label`` names the run in the curves' legends; ``steps`` picks the windows (see ``_select_windows``).
    """
    traj, an = store.read_trajectory(trajectory), store.read_analysis(analysis)
    store.check_analysis_of(traj, trajectory, an, analysis)
    unit = step_unit(traj)
    loss, mean_mu, phase = traj.steps["loss"], an.mean_mu, an.phase
    chosen = _select_windows(an, steps, analysis)
    windows, corr = an.window_steps[chosen], an.window_corr[chosen]
    roles = [an.window_roles[e] for e in chosen]
    steps = np.arange(len(loss))
    diverged_at = traj.diverged_at

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

    _shade_phases(ax_mu, phase)
    ax_mu.axhline(0.0, color="black", lw=0.6)
    ax_mu.plot(steps[: len(mean_mu)], mean_mu, color="tab:blue", lw=1.2, label=label)
    ax_mu.set(title=f"mean gradient correlation (h = {an.h})", xlabel=unit, ylabel="mean correlation",
              ylim=(-1.05, 1.05))
    phase_handles = [Patch(facecolor=colour, alpha=0.6, label=name)
                     for value, (name, colour) in PHASE_COLOURS.items() if (phase == value).any()]

    if diverged_at is not None:
        for ax in (ax_loss, ax_mu):
            ax.axvline(diverged_at, color=DIVERGED, ls="--", lw=1.2, label="diverged")
    for ax in (ax_loss, ax_mu):
        ax.set_xlim(-0.5, max(len(loss), 2) - 0.5)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize=8)
    mu_handles = ax_mu.get_legend_handles_labels()[0] + phase_handles
    if mu_handles:
        ax_mu.legend(handles=mu_handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if not (phase == ZIGZAG).any():
        ax_mu.text(0.02, 0.03, _no_zigzag_note(an.zigzag_below), transform=ax_mu.transAxes, ha="left", va="bottom",
                   fontsize=8, bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.6"})
    suptitle, colour = _diverged_title(title, diverged_at)
    fig.suptitle(suptitle, color=colour, fontsize=13)

    matrix_axes = bottom.subplots(1, n, squeeze=False)[0]
    for ax, k, c, role in zip(matrix_axes, windows, corr, roles):
        _matrix_panel(ax, c, None, int(k), f"{unit} {int(k)}" + (f" ({role})" if role else ""))
    if len(windows):
        _colourbar(bottom, matrix_axes)
    else:
        matrix_axes[0].set_axis_off()
        matrix_axes[0].text(0.5, 0.5, "no windows analysed", ha="center", va="center")
    return fig


# Fig. 8's three sign-flip counts: the analysis field of each and its label; SIGN_COUNTS_LEGEND says what each is.
SIGN_COUNTS = {"window_opposite": "all entries", "window_opposite_nonzero": "non-zero in both",
               "window_opposite_weight": "magnitude-weighted"}
SIGN_COUNTS_LEGEND = (
    "Cells: correlation and % of all entries of opposite sign. Below each panel, the median over the window's "
    "adjacent pairs (k-1, k) of the share of opposite signs:\n"
    "all entries: among all entries (the paper's wording);  non-zero in both: among the entries non-zero in both "
    "gradients;\nmagnitude-weighted: the share of the overlap \u03a3|g_k-1[i] g_k[i]| the entries of opposite sign "
    "carry (what the correlation sees)")


def adjacent_sign_shares(an, e: int) -> dict[str, float]:
    """The three sign-flip counts of window ``e``: the median over its adjacent pairs (the matrices' first
    off-diagonal), by ``SIGN_COUNTS`` label; NaN where none is recorded (a window past the end, an older run)."""
    shares = {}
    for field, label in SIGN_COUNTS.items():
        pairs = np.diag(getattr(an, field)[e], 1)
        shares[label] = float(np.median(pairs[np.isfinite(pairs)])) if np.isfinite(pairs).any() else np.nan
    return shares


def sign_shares_text(shares: dict[str, float]) -> str:
    """One line per count: ``<label>: <percent>`` (``n/a`` where not recorded)."""
    return "\n".join(f"{label}: {100 * v:.0f}%" if np.isfinite(v) else f"{label}: n/a" for label, v in shares.items())


def build_sign_shift_figure(panels: list[tuple[str, str, int | str]], title: str) -> Figure:
    """Paper Figure 8: for each (analysis file, label, step), the window at ``step`` annotated with the
    correlation and the percentage of gradient entries with opposite signs, and below it the three sign-flip
    counts of its adjacent pairs (``adjacent_sign_shares``). Step ``"auto"`` is the deepest zigzag window the
    analysis found (``analysis.auto_windows``); a run without one gets a grey panel."""
    if not panels:
        raise ZigzagError("sign-shift figure: no panels given; name at least one (analysis, label, step)")
    fig = Figure(figsize=(4.3 * len(panels) + 1.0, 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (path, panel_label, step) in zip(axes, panels):
        an = store.read_analysis(path)
        windows = [int(k) for k in an.window_steps]
        if step == "auto":
            found = [k for k, role in zip(windows, an.window_roles) if "zigzag" in role.split(", ")]
            if not found:
                _matrix_panel(ax, np.full((an.h,) * 2, np.nan), None, 0,
                              f"{panel_label}\nno zigzag phase in this run")
                continue
            step = found[0]
        if step not in windows:
            raise ZigzagError(f"{path}: step {step} is not an analysed window (available: "
                              f"{', '.join(map(str, windows)) or 'none'}); add it to the analysis windows")
        e = windows.index(step)
        panel_title, colour = _diverged_title(f"{panel_label} (epoch {step})", an.diverged_at, "run ")
        _matrix_panel(ax, an.window_corr[e], an.window_opposite[e], step, panel_title)
        ax.title.set_color(colour)
        if not np.isnan(an.window_corr[e]).all():
            ax.set_xlabel(sign_shares_text(adjacent_sign_shares(an, e)), fontsize=9)
    _colourbar(fig, axes)
    fig.suptitle(title, fontsize=13)
    fig.supxlabel(SIGN_COUNTS_LEGEND, fontsize=7, wrap=True)
    return fig


def _save(fig: Figure, out_png: str, out_pdf: str) -> None:
    """Write PNG and PDF under temporary names beside them; rename both only when both rendered."""
    with store.atomic_output(out_png) as tmp_png, store.atomic_output(out_pdf) as tmp_pdf:
        fig.savefig(tmp_png, format="png", dpi=DPI)
        fig.savefig(tmp_pdf, format="pdf")


def render(kind: str, inputs, title: str, out_png: str, out_pdf: str, **options) -> None:
    """Draw a figure of ``kind`` with the renderer its declaration names and save it as PNG and PDF.
    ``inputs`` as the kind reads them (``zigzag/figurekinds.py``): the files of one job, or a list of
    panels, a curve or a list of curves; ``options`` the kind's own (``steps`` for a kind with windows)."""
    declared = KINDS[kind]
    args = tuple(inputs) if declared.runs == "run" and declared.seeds == "first" else (inputs,)
    _save(declared.builder()(*args, title, **options), out_png, out_pdf)


# ---------------------------------------------------------------------------------------------
# Curves over seeds (``zigzag/curves.py``): paper Figures 7, 9 and 10. Several seeds are drawn as their
# mean with a band of +-1 sample standard deviation (ddof = 1); one seed as its line.

CORR_COLOUR, LR_COLOUR, CHANGE_COLOUR = "tab:red", "tab:green", "0.25"
BAND_ALPHA = 0.22
CORRELATION_LABELS = {"mean_mu": "mean gradient correlation (h = {h})", "lag1": "correlation of adjacent gradients"}


def _draw(ax, data: CurveData, name: str, colour, label: str | None, lw: float = 1.3):
    """The mean line of ``name`` (and its +-1 sd band for several seeds); returns a legend handle."""
    mean, sd = data.mean_sd(name)
    (line,) = ax.plot(data.x, mean, color=colour, lw=lw, label=label)
    if sd is None:
        return line
    band = ax.fill_between(data.x, mean - sd, mean + sd, color=colour, alpha=BAND_ALPHA, lw=0)
    band.set_label("_band")  # kept out of automatic legends; the handle pairs it with its line
    return (band, line)


def _seed_note(curves: list[CurveData]) -> str | None:
    """How the lines aggregate seeds, for the figure's footnote (None when every curve is one seed)."""
    counts = sorted({c.n for c in curves})
    if counts == [1]:
        return None
    if len(counts) == 1:
        return f"lines: mean over {counts[0]} seeds, shaded: mean ± 1 sd"
    return "lines: mean over seeds (n in the legend), shaded: mean ± 1 sd; one seed: its line"


def _legend_label(data: CurveData, mixed_seeds: bool, with_t: bool = True) -> str:
    """The curve's label; with ``with_t``, a GAWU curve's detected t per seed ("GAWU (t = 10, 11)")."""
    label = data.label
    if with_t and data.schedule_kind == "gawu":
        ts = ", ".join("none" if t is None else data.t_text(t) for t in data.change_points)
        label += f" (t = {ts})"
    if mixed_seeds:
        label += f" [n = {data.n}]"
    if data.diverged:
        label += f", {data.diverged} of {data.n} diverged" if data.n > 1 else ", diverged"
    return label


def _footnote(fig: Figure, curves: list[CurveData]) -> None:
    notes = [n for n in [_seed_note(curves)] if n] + [n for c in curves for n in c.notes]
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=8, color="0.35")


def _correlation_axes(ax, name: str, h: int | None) -> None:
    """A correlation's axes: the zero line, its label (``CORRELATION_LABELS``) and its range [-1, 1]."""
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set(xlabel="epoch", ylabel=CORRELATION_LABELS[name].format(h=h), ylim=(-1.05, 1.05))


def _epoch_xlim(ax, curves: list[CurveData]) -> None:
    right = max(float(c.x[-1]) if len(c.x) else 0.0 for c in curves)
    ax.set_xlim(0.0, max(right, 1.0))


def build_warmup_figure(curve: Curve, title: str) -> Figure:
    """Paper Figure 7: the mean gradient correlation (red, left axis) and the learning rate (green, right
    axis) against the epoch; the change point ``t`` of a warm-up schedule as a dotted vertical line."""
    data = load_curve(curve)
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    ax = fig.subplots()
    ax_lr = ax.twinx()
    handles = [_draw(ax, data, "mean_mu", CORR_COLOUR, "mean gradient correlation"),
               _draw(ax_lr, data, "lr", LR_COLOUR, "learning rate")]
    labels = ["mean gradient correlation", "learning rate"]
    _correlation_axes(ax, "mean_mu", data.h)
    ax.yaxis.label.set_color(CORR_COLOUR)
    ax_lr.set_ylabel("learning rate", color=LR_COLOUR)
    ax_lr.set_ylim(bottom=0.0)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    _epoch_xlim(ax, [data])
    detected = [t for t in data.change_points if t is not None]
    for i, t in enumerate(sorted(set(detected))):
        share = detected.count(t)
        text = f"t = {data.t_text(t)}" + (f" ({share} of {data.n} seeds)" if share < data.n else "")
        x = data.change_epoch(t)
        handles.append(ax.axvline(x, color=CHANGE_COLOUR, ls=":", lw=1.5))
        labels.append(text)
        ax.annotate(f" t = {data.t_text(t)}", (x, 1.0 - 0.06 * (i % 3)), xycoords=("data", "axes fraction"),
                    va="top", ha="left", fontsize=9, color=CHANGE_COLOUR)
    fig.legend(handles, labels, title=_legend_label(data, False), fontsize=8, title_fontsize=9,
               loc="outside right center")
    ax.set_zorder(ax_lr.get_zorder() + 1)  # the correlation above the lr band ...
    ax.patch.set_visible(False)            # ... without hiding it
    fig.suptitle(title, fontsize=13)
    _footnote(fig, [data])
    return fig


def _correlation_curves_figure(curves: list[Curve], title: str, name: str, what: str, lw: float) -> Figure:
    """The correlation ``name`` ("mean_mu" or "lag1") against the epoch, one line (and band) per curve."""
    if not curves:
        raise ZigzagError(f"{what} figure: no curves given; name at least one (label, files)")
    data = [load_curve(c) for c in curves]
    mixed = len({d.n for d in data}) > 1
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"].colors
    handles = [_draw(ax, d, name, colours[i % 10], d.label, lw=lw) for i, d in enumerate(data)]
    _correlation_axes(ax, name, data[0].h)
    _epoch_xlim(ax, data)
    fig.legend(handles, [_legend_label(d, mixed, with_t=False) for d in data], fontsize=9, loc="outside right center")
    fig.suptitle(title, fontsize=13)
    _footnote(fig, data)
    return fig


def build_batch_size_figure(curves: list[Curve], title: str) -> Figure:
    """Paper Figure 9: the mean gradient correlation against the epoch, one line (and band) per curve."""
    return _correlation_curves_figure(curves, title, "mean_mu", "batch-size", lw=1.3)


def build_schedules_figure(curves: list[Curve], title: str) -> Figure:
    """Paper Figure 10: training loss (log scale) and learning rate against the epoch, one line per
    schedule; a GAWU curve's legend label carries its detected change point(s) t."""
    if not curves:
        raise ZigzagError("schedules figure: no curves given; name at least one (label, files)")
    data = [load_curve(c) for c in curves]
    mixed = len({d.n for d in data}) > 1
    fig = Figure(figsize=(11.0, 4.6), layout="constrained")
    ax_loss, ax_lr = fig.subplots(1, 2)
    colours = matplotlib.colormaps["tab10"].colors
    handles = []
    for i, d in enumerate(data):
        handles.append(_draw(ax_loss, d, "loss", colours[i % 10], d.label))
        _draw(ax_lr, d, "lr", colours[i % 10], d.label)
    losses = np.concatenate([d.series["loss"].ravel() for d in data])
    if (losses[np.isfinite(losses)] > 0).all():
        ax_loss.set_yscale("log")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_lr.set(title="learning rate", xlabel="epoch", ylabel="learning rate")
    ax_lr.set_ylim(bottom=0.0)
    for ax in (ax_loss, ax_lr):
        _epoch_xlim(ax, data)
    fig.legend(handles, [_legend_label(d, mixed) for d in data], loc="outside right center", fontsize=9)
    fig.suptitle(title, fontsize=13)
    _footnote(fig, data)
    return fig


def build_lag1_figure(curves: list[Curve], title: str) -> Figure:
    """The correlation of adjacent gradients mu(k-1, k) (eq. 2 at lag 1, from ``/steps/dot``) against the
    epoch, one line (and band) per curve: the step-by-step sign flip of the zigzag (near -1) that the
    mean correlation (eq. 3) averages over a window. Reads trajectories only."""
    return _correlation_curves_figure(curves, title, "lag1", "lag-1", lw=0.9)


# ---------------------------------------------------------------------------------------------
# Beyond the paper: sharpness (edge of stability) against the gradient geometry.


def build_sharpness_figure(trajectory: str, analysis: str, title: str) -> Figure:
    """Sharpness lambda_max with the 2/lr line (top), mean gradient correlation with the phases (middle)
    and |cos(g_k, top eigenvector)| (bottom) on a shared step axis; vertical lines mark the first step
    where the sharpness reaches 2/lr and the zigzag onset."""
    traj, an = store.read_trajectory(trajectory), store.read_analysis(analysis)
    store.check_analysis_of(traj, trajectory, an, analysis)
    if "sharpness" not in traj.steps:
        raise ZigzagError(f"{trajectory}: no /steps/sharpness; train with sharpness.every set")
    unit = step_unit(traj)
    steps = np.arange(len(traj))
    sharp, lr = traj.steps["sharpness"], traj.steps["lr"]
    computed = np.isfinite(sharp)
    fig = Figure(figsize=(9.0, 8.0), layout="constrained")
    ax_s, ax_mu, ax_cos = fig.subplots(3, 1, sharex=True, height_ratios=[1.3, 1.0, 0.8])
    ax_s.plot(steps[computed], sharp[computed], "o-", color="tab:purple", ms=3, lw=1.2,
              label="sharpness $\\lambda_{max}$")
    ax_s.plot(steps, 2.0 / lr, "--", color="black", lw=1.0, label="2 / lr")
    ax_s.set(ylabel="top Hessian eigenvalue", title="sharpness and the stability threshold 2/lr")
    _shade_phases(ax_mu, an.phase, labelled=True)
    ax_mu.axhline(0.0, color="black", lw=0.6)
    ax_mu.plot(steps, an.mean_mu, color="tab:blue", lw=1.2, label="mean correlation")
    ax_mu.set(ylabel=f"mean correlation (h = {an.h})", ylim=(-1.05, 1.05))
    cosine = traj.steps["grad_eigvec_cosine"]
    ax_cos.plot(steps[computed], cosine[computed], "o-", color="tab:orange", ms=3, lw=1.0)
    ax_cos.set(ylabel="|cos(g, v_max)|", xlabel=unit, ylim=(0.0, 1.02))
    marks = ((an.eos_step, f"sharpness reaches 2/lr (within {an.eos_tolerance:.0%})", "tab:gray", "-."),
             (an.zigzag_onset, "zigzag onset", "tab:red", ":"))
    for step, label, colour, style in marks:
        if step is not None:
            for ax in (ax_s, ax_mu, ax_cos):
                ax.axvline(step, color=colour, ls=style, lw=1.3, label=label if ax is ax_s else None)
    suptitle, colour = _diverged_title(title, traj.diverged_at)
    ax_s.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax_mu.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(suptitle, color=colour, fontsize=13)
    return fig



def build_divergence_figure(panels: list[tuple[str, str, str, int | str]], title: str) -> Figure:
    """A run (the first panel) and its perturbed twins (the others): the distance of each twin's parameters
    |theta_k - theta'_k| (top) and losses |loss_k - loss'_k| (bottom) from the run's, on a log scale, with the
    run's zigzag onset and first step at 2/lr marked; each twin's growth rate per step
    (``curves.growth_rate``) in its legend. A panel's STEP is not used."""
    if len(panels) < 2:
        raise ZigzagError("divergence: give the run and at least one perturbed twin (two panels)")
    (reference, ref_analysis, ref_label, _), *twins = panels
    traj, an = store.read_trajectory(reference), store.read_analysis(ref_analysis)
    store.check_analysis_of(traj, reference, an, ref_analysis)
    fig = Figure(figsize=(9.0, 7.0), layout="constrained")
    ax_p, ax_l = fig.subplots(2, 1, sharex=True)
    for i, (twin, twin_analysis, label, _) in enumerate(twins):
        twin_an = store.read_analysis(twin_analysis)
        store.check_analysis_of(store.read_trajectory(twin), twin, twin_an, twin_analysis)
        d = read_divergence(reference, twin, label, twin_an)
        colour = f"C{i}"
        for ax, distance, what in ((ax_p, d.parameters, "|theta - theta'|"), (ax_l, d.loss, "|loss - loss'|")):
            rate = growth_rate(d.steps, distance)
            shown = distance > 0
            note = "no growth to fit" if rate is None else \
                f"grows x{np.exp(rate[0]):.3g} per step (ln slope {rate[0]:.3g}, steps {rate[1]}-{rate[2]})"
            ax.semilogy(d.steps[shown], distance[shown], color=colour, lw=1.2, label=f"{label}: {note}")
            if rate is not None:
                ax.axvspan(rate[1], rate[2], color=colour, alpha=0.06)
        if d.zigzag_onset is not None:
            ax_p.axvline(d.zigzag_onset, color=colour, ls=":", lw=1.0, label=f"{label}: zigzag onset")
    marks = ((an.zigzag_onset, f"{ref_label}: zigzag onset", "tab:red", ":"),
             (an.eos_step, f"{ref_label}: sharpness reaches 2/lr", "tab:gray", "-."))
    for step, label, colour, style in marks:
        if step is not None:
            for ax in (ax_p, ax_l):
                ax.axvline(step, color=colour, ls=style, lw=1.3, label=label if ax is ax_p else None)
    ax_p.set(ylabel="parameter distance |theta_k - theta'_k|",
             title=f"distance of each perturbed twin from {ref_label}")
    ax_l.set(ylabel="loss distance |loss_k - loss'_k|", xlabel=step_unit(traj))
    for ax in (ax_p, ax_l):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.supxlabel(f"growth rate: least-squares slope of ln distance from its smallest value to the first step at "
                  f"{GROWTH_UNTIL:.0%} of its largest (shaded); zeros not drawn", fontsize=7, color="0.35")
    suptitle, colour = _diverged_title(title, traj.diverged_at)
    fig.suptitle(suptitle, color=colour, fontsize=13)
    return fig


# ---------------------------------------------------------------------------------------------
# A learning-rate sweep (``zigzag/onsets.py``): the phase diagram.


def _log_edges(values: np.ndarray) -> np.ndarray:
    """Cell edges around sorted positive values on a log axis: geometric midpoints, the ends mirrored."""
    if len(values) == 1:
        return np.array([values[0] / 1.5, values[0] * 1.5])
    mids = np.sqrt(values[1:] * values[:-1])
    return np.concatenate([[values[0] ** 2 / mids[0]], mids, [values[-1] ** 2 / mids[-1]]])


def build_phase_diagram(curves: list[Curve], title: str) -> Figure:
    """Left: the mean gradient correlation (eq. 3) over (step, lr), averaged over seeds (and over the runs that
    share an lr), on a diverging scale with the phase thresholds marked on the colour bar; per run and seed the
    zigzag onset (x) and the step where the sharpness reaches 2/lr (o); lr = 2/lambda0 dashed. Right: the onset
    step against lr (log-log), mean and range over seeds, runs that never zigzag as censored markers (^ at the
    run's length) left out of the fitted line (``zigzag.onsets.fit_slopes``); the largest lr that never zigzags and the
    smallest that diverges annotated."""
    from zigzag import onsets

    runs = onsets.load_sweep(curves)
    lrs = np.array(sorted({r.lr for r in runs}))
    length = max(len(r.mean_mu) for r in runs)
    grid = np.full((len(lrs), length), np.nan)
    for i, lr in enumerate(lrs):
        rows = [np.pad(r.mean_mu, (0, length - len(r.mean_mu)), constant_values=np.nan) for r in runs if r.lr == lr]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step no seed reached: NaN, drawn grey
            grid[i] = np.nanmean(rows, axis=0)
    fig = Figure(figsize=(12.0, 5.2), layout="constrained")
    ax, ax_on = fig.subplots(1, 2, width_ratios=[1.6, 1.0])
    mesh = ax.pcolormesh(np.arange(length + 1) - 0.5, _log_edges(lrs), np.ma.masked_invalid(grid), cmap=CMAP,
                         norm=NORM, shading="flat")
    bar = fig.colorbar(mesh, ax=ax, label="mean gradient correlation (eq. 3), mean over seeds")
    for threshold, name in ((runs[0].smooth_above, "smooth above"), (runs[0].zigzag_below, "zigzag below")):
        bar.ax.axhline(threshold, color="black", lw=1.5)
        bar.ax.text(-0.3, threshold, f"{name} {threshold:g}", transform=bar.ax.get_yaxis_transform(), ha="right",
                    va="center", fontsize=7, rotation=90)
    onset_runs = [r for r in runs if r.onset is not None]
    ax.scatter([r.onset for r in onset_runs], [r.lr for r in onset_runs], marker="x", color="black", s=30,
               label="zigzag onset")
    eos_runs = [r for r in runs if r.eos_step is not None]
    if eos_runs:
        ax.scatter([r.eos_step for r in eos_runs], [r.lr for r in eos_runs], marker="o", facecolor="none",
                   edgecolor="tab:purple", s=36, label="sharpness reaches 2/lr")
    catapult = onsets.catapult_lr(runs)
    if catapult is not None:
        ax.axhline(catapult, color="tab:purple", ls="--", lw=1.2, label=f"lr = 2/$\\lambda_0$ = {catapult:.3g}")
        ax_on.axvline(catapult, color="tab:purple", ls="--", lw=1.2, label="lr = 2/$\\lambda_0$")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="learning rate", xlim=(-0.5, length - 0.5), title="phases over (step, lr)")
    ax.legend(fontsize=7, loc="lower right")
    _onset_panel(ax_on, runs, length, onsets.fit_slopes(runs))
    never, diverged = onsets.largest_never_zigzag_lr(runs), onsets.smallest_diverged_lr(runs)
    for lr, text, colour in ((never, "largest lr never zigzagging", "tab:green"),
                             (diverged, "smallest lr diverging", DIVERGED)):
        if lr is not None:
            ax_on.axvline(lr, color=colour, lw=1.0, ls=":")
            ax_on.annotate(f"{text}: {lr:.3g}", (lr, 0.02), xycoords=("data", "axes fraction"), fontsize=7,
                           color=colour, rotation=90, ha="right", va="bottom")
    ax_on.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=13)
    return fig


def _onset_panel(ax, runs, length: int, slopes: dict[int, float]) -> None:
    """The onset step against lr (log-log): per lr the mean over the seeds that zigzag with their range, the runs
    that finished without zigzagging censored at the top edge (the run's length), and the line of the seeds'
    mean slope."""
    from zigzag.onsets import slope_summary

    lrs = sorted({r.lr for r in runs})
    for lr in lrs:
        steps = [r.onset for r in runs if r.lr == lr and r.onset is not None and r.onset >= 1]
        if steps:
            ax.errorbar([lr], [np.mean(steps)], yerr=[[np.mean(steps) - min(steps)], [max(steps) - np.mean(steps)]],
                        fmt="o", color="black", ms=4, capsize=2)
    censored = [r.lr for r in runs if r.onset is None and not r.diverged]
    if censored:
        ax.scatter(censored, [length] * len(censored), marker="^", color="0.5",
                   label="never zigzags (censored at the run's end)")
    mean, sd, n = slope_summary(slopes)
    fitted = [r for r in runs if r.onset is not None and r.onset >= 1 and not r.diverged]
    if n and fitted:
        x = np.log([r.lr for r in fitted])
        intercept = float(np.mean(np.log([r.onset for r in fitted]) - mean * x))
        line = np.geomspace(min(r.lr for r in fitted), max(r.lr for r in fitted), 20)
        ax.plot(line, np.exp(intercept + mean * np.log(line)), color="tab:red", lw=1.2,
                label=f"onset $\\propto$ lr^{mean:.2f}" + (f" ± {sd:.2f}" if n > 1 else "") + f" ({n} seed(s))")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="zigzag onset step",
           title="zigzag onset against lr")


def build_layers_figure(trajectory: str, analysis: str, title: str) -> Figure:
    """Per layer (tensors grouped by module, ``zigzag/layers.py``), in network order from the top: the adjacent
    gradient correlation mu_L(k-1, k) over the steps as a heat map with the zigzag windows marked above it, and
    beside it the layer's mean opposite-sign share and mean adjacent correlation inside the zigzag windows; the
    title line gives the fraction of layers and of parameters below the zigzag threshold there."""
    from zigzag.layers import load_layers

    data = load_layers(trajectory, analysis)
    traj = store.read_trajectory(trajectory)
    n_layers, n_steps = data.adjacent_mu.shape
    fig = Figure(figsize=(12.0, 4.0 + 0.16 * n_layers), layout="constrained")
    grid = fig.add_gridspec(2, 3, width_ratios=[4.0, 1.0, 1.0], height_ratios=[0.25, 1.0])
    ax_zz = fig.add_subplot(grid[0, 0])
    ax_map = fig.add_subplot(grid[1, 0], sharex=ax_zz)
    ax_flip = fig.add_subplot(grid[1, 1], sharey=ax_map)
    ax_mu = fig.add_subplot(grid[1, 2], sharey=ax_map)
    extent = (-0.5, n_steps - 0.5, n_layers - 0.5, -0.5)
    ax_map.imshow(data.adjacent_mu, aspect="auto", cmap=CMAP, norm=NORM, interpolation="nearest", extent=extent)
    ax_map.set_yticks(range(n_layers), [f"{name} ({size:,.0f})" for name, size in zip(data.names, data.sizes)],
                      fontsize=6)
    ax_map.set(xlabel=step_unit(traj), ylabel="layer (module: parameters), input at the top")
    fig.colorbar(ScalarMappable(norm=NORM, cmap=CMAP), ax=ax_map, location="bottom", shrink=0.5,
                 label="adjacent-gradient correlation")
    ax_zz.broken_barh(_phase_runs(data.zigzag_pairs.astype(np.int8), 1), (0, 1), facecolors=PHASE_COLOURS[ZIGZAG][1])
    ax_zz.set(yticks=[], ylim=(0, 1), title="adjacent-gradient correlation per layer; above: pairs inside the "
              "zigzag windows")
    ax_zz.tick_params(labelbottom=False)
    rows = np.arange(n_layers)
    ax_flip.barh(rows, 100 * data.zigzag_flips, color="tab:purple", height=0.8)
    ax_flip.set(xlabel="% opposite signs (lag 1)", title="sign flips, zigzag", xlim=(0, 100))
    ax_flip.axvline(50, color="black", lw=0.6, ls=":")
    colours = np.where(data.below, "tab:red", "0.6")
    ax_mu.barh(rows, data.zigzag_mu, color=colours, height=0.8)
    ax_mu.axvline(data.zigzag_below, color="black", lw=0.8, ls="--", label=f"zigzag below {data.zigzag_below:g}")
    ax_mu.set(xlabel="adjacent correlation", title="correlation, zigzag", xlim=(-1.05, 1.05))
    ax_mu.legend(fontsize=7, loc="lower right")
    for ax in (ax_flip, ax_mu):
        ax.tick_params(labelleft=False)
    layers, params = data.fractions()
    verdict = ("no zigzag windows in this run" if np.isnan(layers) else
               f"below the zigzag threshold in the zigzag windows: {layers:.0%} of the {n_layers} layers, "
               f"{params:.1%} of the parameters")
    suptitle, colour = _diverged_title(f"{title}\n{verdict}", traj.diverged_at)
    fig.suptitle(suptitle, color=colour, fontsize=12)
    return fig

"""The paper's figures from analysis (and trajectory) files: matplotlib's object API, no display needed.

- ``trajectory_figure`` (paper Figures 1-6): training loss and mean gradient correlation over the run,
  then the h x h gradient correlation matrix of every analysed window.
- ``sign_shift_figure`` (paper Figure 8): chosen windows, each cell annotated with the correlation and the
  percentage of gradient entries with opposite signs.
- ``warmup_figure`` (Figure 7), ``batch_size_figure`` (Figure 9), ``schedules_figure`` (Figure 10): curves
  against the epoch, each curve one label and one (trajectory, analysis) pair per seed; several seeds are
  drawn as mean +- 1 sample standard deviation.
- ``build_lag1_figure`` (beyond the paper): the correlation of adjacent gradients at every step, curves
  of trajectories alone.

The ``build_*`` functions return the ``Figure``; the others save it as PNG and PDF, atomically. Each
figure kind of the workflow names its ``build_*`` function in ``zigzag/figurekinds.py``; ``render`` draws
a kind from the inputs its declaration describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.colors
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from zigzag import store
from zigzag.analysis import RANDOM, SMOOTH, ZIGZAG, adjacent_mu
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


def build_trajectory_figure(trajectory: str, analysis: str, title: str, label: str | None = None,
                            steps: list | None = None) -> Figure:
    """Paper Figure 1: loss and mean gradient correlation (top), one correlation matrix per window (bottom).

    ``label`` names the run in the curves' legends; ``steps`` picks the windows (see ``_select_windows``).
    """
    traj, an = store.read_trajectory(trajectory), store.read_analysis(analysis)
    store.check_analysis_of(traj, trajectory, an, analysis)
    unit = "epoch" if traj.config.get("optimizer", "gd") == "gd" else "iteration"
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

    for value, (name, colour) in PHASE_COLOURS.items():
        ax_mu.broken_barh(_phase_runs(phase, value), (-1.05, 2.1), facecolors=colour, alpha=0.6, lw=0)
    ax_mu.axhline(0.0, color="black", lw=0.6)
    ax_mu.plot(steps[: len(mean_mu)], mean_mu, color="tab:blue", lw=1.2, label=label)
    ax_mu.set(title=f"mean gradient correlation (h = {an.h})", xlabel=unit, ylabel="mean correlation",
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
    for ax, k, c, role in zip(matrix_axes, windows, corr, roles):
        _matrix_panel(ax, c, None, int(k), f"{unit} {int(k)}" + (f" ({role})" if role else ""))
    if len(windows):
        _colourbar(bottom, matrix_axes)
    else:
        matrix_axes[0].set_axis_off()
        matrix_axes[0].text(0.5, 0.5, "no windows analysed", ha="center", va="center")
    return fig


def build_sign_shift_figure(panels: list[tuple[str, str, int | str]], title: str) -> Figure:
    """Paper Figure 8: for each (analysis file, label, step), the window at ``step`` annotated with the
    correlation and the percentage of gradient entries with opposite signs. Step ``"auto"`` is the deepest
    zigzag window the analysis found (``analysis.auto_windows``); a run without one gets a grey panel."""
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
        panel_title = f"{panel_label} (epoch {step})"
        if an.diverged_at is not None:
            panel_title += f"\nrun DIVERGED at step {an.diverged_at}"
        _matrix_panel(ax, an.window_corr[e], an.window_opposite[e], step, panel_title)
        if an.diverged_at is not None:
            ax.title.set_color(DIVERGED)
    _colourbar(fig, axes)
    fig.suptitle(title, fontsize=13)
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
    build = globals()[declared.renderer]
    args = tuple(inputs) if declared.runs == "run" and declared.seeds == "first" else (inputs,)
    _save(build(*args, title, **options), out_png, out_pdf)


def trajectory_figure(trajectory: str, analysis: str, out_png: str, out_pdf: str, title: str,
                      label: str | None = None, steps: list | None = None) -> None:
    """Render ``build_trajectory_figure`` to PNG and PDF."""
    _save(build_trajectory_figure(trajectory, analysis, title, label, steps), out_png, out_pdf)


def sign_shift_figure(panels: list[tuple[str, str, int]], out_png: str, out_pdf: str, title: str) -> None:
    """Render ``build_sign_shift_figure`` to PNG and PDF."""
    _save(build_sign_shift_figure(panels, title), out_png, out_pdf)


# ---------------------------------------------------------------------------------------------
# Curves over seeds: paper Figures 7, 9 and 10.
#
# A curve is ``(label, [(trajectory, analysis), ...])``, one pair of files per seed (a kind that reads no
# analysis: ``(trajectory,)`` per seed, and the curve has no "mean_mu"). The x axis is the
# epoch, step / batches_per_epoch (fractional for SGD iterations; the step itself for GD). Several seeds
# are drawn as their mean with a band of +-1 sample standard deviation (ddof = 1); one seed as its line.

Curve = tuple[str, list[tuple[str, ...]]]
CORR_COLOUR, LR_COLOUR, CHANGE_COLOUR = "tab:red", "tab:green", "0.25"
BAND_ALPHA = 0.22


@dataclass
class CurveData:
    """The seeds of one curve, cut to their common prefix of steps."""

    label: str
    x: np.ndarray                  # epoch of each step: step / batches_per_epoch
    series: dict[str, np.ndarray]  # "mean_mu", "lag1", "loss", "lr": [seeds, steps]
    h: int | None                  # the analyses' window; None for trajectories alone
    schedule_kind: str             # constant | warmup_cosine | gawu
    unit: str                      # the schedule's unit: epoch | iteration
    batches_per_epoch: int
    change_points: list[int | None]  # per seed, in schedule units; None: none
    diverged: int                  # seeds that diverged
    notes: list[str]

    @property
    def n(self) -> int:
        return len(self.change_points)

    def mean_sd(self, name: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean over seeds and the sample standard deviation (None for one seed); NaN where any seed is."""
        values = self.series[name]
        if self.n == 1:
            return values[0], None
        return values.mean(axis=0), values.std(axis=0, ddof=1)

    def change_epoch(self, t: int) -> float:
        """A change point in schedule units as an epoch (the x axis)."""
        return t / self.batches_per_epoch if self.unit == "iteration" else float(t)

    def t_text(self, t: int) -> str:
        return f"{t} iterations" if self.unit == "iteration" else str(t)


def load_curve(curve: Curve) -> CurveData:
    """Read every seed of ``curve``; unequal lengths (diverged or unfinished seeds) are cut to the
    common prefix, and the notes say so."""
    label, pairs = curve
    if not pairs:
        raise ZigzagError(f"curve {label!r}: no (trajectory, analysis) files; give one pair per seed")
    trajs, analyses = [], []
    for traj_path, *analysis_paths in pairs:
        traj = store.read_trajectory(traj_path)
        for analysis_path in analysis_paths:
            an = store.read_analysis(analysis_path)
            store.check_analysis_of(traj, traj_path, an, analysis_path)
            if len(an) != len(traj):
                raise ZigzagError(f"{analysis_path}: {len(an)} steps, but its trajectory {traj_path} has "
                                  f"{len(traj)}; re-run `zigzag analyze` on that trajectory")
            analyses.append(an)
        trajs.append(traj)
    bpe = {int(t.attrs.get("batches_per_epoch", 1)) for t in trajs}
    hs = {a.h for a in analyses}
    if len(bpe) > 1 or len(hs) > 1:
        raise ZigzagError(f"curve {label!r}: its seeds differ in batches per epoch ({sorted(bpe)}) or window h "
                          f"({sorted(hs)}); a curve's seeds must share every setting but the seed")
    (bpe,), h = bpe, (hs.pop() if hs else None)
    lengths = [len(t) for t in trajs]
    k = min(lengths)
    schedule = trajs[0].config.get("schedule") or {}
    diverged = [t.diverged_at for t in trajs if t.status == "diverged"]
    notes = []
    if diverged:
        where = ", ".join(map(str, diverged))
        notes.append(f"{label}: {len(diverged)} of {len(trajs)} seeds diverged (at step {where})"
                     if len(trajs) > 1 else f"{label}: diverged at step {where}")
    if len(set(lengths)) > 1:
        notes.append(f"{label}: seeds aligned on their common first {k} steps")
    series = {name: np.stack([t.steps[name][:k] for t in trajs]) for name in ("loss", "lr")}
    if analyses:
        series["mean_mu"] = np.stack([a.mean_mu[:k] for a in analyses])
    series["lag1"] = np.stack([adjacent_mu(t.steps["dot"])[:k] for t in trajs])
    return CurveData(label=label, x=np.arange(k) / bpe, series=series, h=h,
                     schedule_kind=schedule.get("kind", "constant"), unit=schedule.get("unit", "epoch"),
                     batches_per_epoch=bpe, change_points=[store.schedule_change_point(t) for t in trajs],
                     diverged=len(diverged), notes=notes)


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


def _mu_axes(ax, h: int) -> None:
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set(xlabel="epoch", ylabel=f"mean gradient correlation (h = {h})", ylim=(-1.05, 1.05))


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
    _mu_axes(ax, data.h)
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


def build_batch_size_figure(curves: list[Curve], title: str) -> Figure:
    """Paper Figure 9: the mean gradient correlation against the epoch, one line (and band) per curve."""
    if not curves:
        raise ZigzagError("batch-size figure: no curves given; name at least one (label, files)")
    data = [load_curve(c) for c in curves]
    mixed = len({d.n for d in data}) > 1
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"].colors
    handles = [_draw(ax, d, "mean_mu", colours[i % 10], d.label) for i, d in enumerate(data)]
    _mu_axes(ax, data[0].h)
    _epoch_xlim(ax, data)
    fig.legend(handles, [_legend_label(d, mixed, with_t=False) for d in data], fontsize=9, loc="outside right center")
    fig.suptitle(title, fontsize=13)
    _footnote(fig, data)
    return fig


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
    if not curves:
        raise ZigzagError("lag-1 figure: no curves given; name at least one (label, files)")
    data = [load_curve(c) for c in curves]
    mixed = len({d.n for d in data}) > 1
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    ax = fig.subplots()
    colours = matplotlib.colormaps["tab10"].colors
    handles = [_draw(ax, d, "lag1", colours[i % 10], d.label, lw=0.9) for i, d in enumerate(data)]
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set(xlabel="epoch", ylabel="correlation of adjacent gradients", ylim=(-1.05, 1.05))
    _epoch_xlim(ax, data)
    fig.legend(handles, [_legend_label(d, mixed, with_t=False) for d in data], fontsize=9, loc="outside right center")
    fig.suptitle(title, fontsize=13)
    _footnote(fig, data)
    return fig


def warmup_figure(curve: Curve, out_png: str, out_pdf: str, title: str) -> None:
    """Render ``build_warmup_figure`` to PNG and PDF."""
    _save(build_warmup_figure(curve, title), out_png, out_pdf)


def batch_size_figure(curves: list[Curve], out_png: str, out_pdf: str, title: str) -> None:
    """Render ``build_batch_size_figure`` to PNG and PDF."""
    _save(build_batch_size_figure(curves, title), out_png, out_pdf)


def schedules_figure(curves: list[Curve], out_png: str, out_pdf: str, title: str) -> None:
    """Render ``build_schedules_figure`` to PNG and PDF."""
    _save(build_schedules_figure(curves, title), out_png, out_pdf)


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
    unit = "epoch" if traj.config.get("optimizer", "gd") == "gd" else "iteration"
    steps = np.arange(len(traj))
    sharp, lr = traj.steps["sharpness"], traj.steps["lr"]
    computed = np.isfinite(sharp)
    fig = Figure(figsize=(9.0, 8.0), layout="constrained")
    ax_s, ax_mu, ax_cos = fig.subplots(3, 1, sharex=True, height_ratios=[1.3, 1.0, 0.8])
    ax_s.plot(steps[computed], sharp[computed], "o-", color="tab:purple", ms=3, lw=1.2,
              label="sharpness $\\lambda_{max}$")
    ax_s.plot(steps, 2.0 / lr, "--", color="black", lw=1.0, label="2 / lr")
    ax_s.set(ylabel="top Hessian eigenvalue", title="sharpness and the stability threshold 2/lr")
    for value, (name, colour) in PHASE_COLOURS.items():
        ax_mu.broken_barh(_phase_runs(an.phase, value), (-1.05, 2.1), facecolors=colour, alpha=0.6, lw=0,
                          label=name)
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
    suptitle, colour = title, "black"
    if traj.diverged_at is not None:
        suptitle, colour = f"{title}\nDIVERGED at step {traj.diverged_at}", DIVERGED
    ax_s.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax_mu.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(suptitle, color=colour, fontsize=13)
    return fig


def sharpness_figure(trajectory: str, analysis: str, out_png: str, out_pdf: str, title: str) -> None:
    """Render ``build_sharpness_figure`` to PNG and PDF."""
    _save(build_sharpness_figure(trajectory, analysis, title), out_png, out_pdf)

"""Paper Table 1 from trajectory files: final test accuracy per learning-rate schedule, over seeds; and the
zigzag onset against the learning rate of a sweep (``onset_table``).

``schedule_table`` builds a ``pandas.DataFrame`` (one row per schedule); ``write_table`` writes it as
CSV (every column, numbers unformatted), GitHub Markdown and a booktabs LaTeX table (the columns for
reading), each file atomically. The Markdown and LaTeX are written here: no tabulate or jinja2 needed.

The final test accuracy of a run is the last evaluated ``/steps/test_accuracy`` (the trainer always
evaluates the last step). A diverged run has none: it counts as NaN, the mean and standard deviation
(ddof = 1) are taken over the seeds that finished, and the row's note says how many diverged.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from zigzag import store
from zigzag.errors import ZigzagError
from zigzag.scheduleconfig import schedule_setting

SCHEDULE, SEEDS, CHANGE_POINT = "schedule", "seeds", "change point t"
MEAN, SD, ACCURACY, NOTE = "test accuracy mean (%)", "test accuracy sd (%)", "test accuracy (%)", "note"
COLUMNS = [SCHEDULE, SEEDS, CHANGE_POINT, MEAN, SD, ACCURACY, NOTE]
DISPLAY = [SCHEDULE, SEEDS, CHANGE_POINT, ACCURACY, NOTE]  # the Markdown and LaTeX columns
MISSING = "-"


def final_test_accuracy(traj: store.Trajectory) -> float:
    """The last evaluated test accuracy (a fraction); NaN for a diverged run or one never evaluated."""
    if traj.status == "diverged":
        return math.nan
    acc = traj.steps["test_accuracy"]
    done = np.flatnonzero(np.isfinite(acc))
    return float(acc[done[-1]]) if len(done) else math.nan


def _change_points(trajs: list[store.Trajectory]) -> str:
    """GAWU: the detected t of every seed ("10, 11, 11"); WU: its t; "-" where there is none."""
    schedule = trajs[0].config.get("schedule") or {}
    suffix = " (iterations)" if schedule_setting(schedule, "unit") == "iteration" else ""
    ts = [store.schedule_change_point(t) for t in trajs]
    if schedule.get("kind") != "gawu":
        ts = sorted(set(ts), key=lambda t: -1 if t is None else t)
    if all(t is None for t in ts):
        return MISSING
    return ", ".join(MISSING if t is None else str(t) for t in ts) + suffix


def schedule_table(rows: list[tuple[str, list[str]]]) -> pd.DataFrame:
    """One row per (schedule label, [trajectory file per seed]): the change point t, and the mean, sample
    standard deviation and "mean ± sd" string of the final test accuracy in percent."""
    if not rows:
        raise ZigzagError("schedule table: no rows given; name at least one (label, trajectory files)")
    records = []
    for label, paths in rows:
        if not paths:
            raise ZigzagError(f"table row {label!r}: no trajectory files; give one per seed")
        trajs = [store.read_trajectory(p) for p in paths]
        for path, traj in zip(paths, trajs):
            if traj.status not in ("completed", "diverged"):
                raise ZigzagError(f"{path}: training is still {traj.status}; finish it (rerun `zigzag train`) "
                                  "before tabulating its final accuracy")
        acc = 100.0 * np.array([final_test_accuracy(t) for t in trajs])
        ok = acc[np.isfinite(acc)]
        mean = float(ok.mean()) if len(ok) else math.nan
        sd = float(ok.std(ddof=1)) if len(ok) > 1 else math.nan
        if not len(ok):
            text = "diverged" if all(t.status == "diverged" for t in trajs) else MISSING
        else:
            text = f"{mean:.2f}" if len(ok) == 1 else f"{mean:.2f} ± {sd:.2f}"
        notes = []
        n_diverged = sum(t.status == "diverged" for t in trajs)
        if n_diverged:
            notes.append(f"{n_diverged} of {len(trajs)} diverged" if len(trajs) > 1 else "diverged")
        n_unevaluated = len(trajs) - n_diverged - len(ok)
        if n_unevaluated:
            notes.append(f"{n_unevaluated} of {len(trajs)} never evaluated on the test set")
        if 0 < len(ok) < len(trajs):
            notes.append(f"mean over {len(ok)}")
        records.append({SCHEDULE: label, SEEDS: len(trajs), CHANGE_POINT: _change_points(trajs), MEAN: mean,
                        SD: sd, ACCURACY: text, NOTE: "; ".join(notes)})
    df = pd.DataFrame.from_records(records, columns=COLUMNS)
    df.attrs["display_columns"] = DISPLAY
    return df


# ---------------------------------------------------------------------------------------------
# writers


def _cell(value) -> str:
    if isinstance(value, float):
        return MISSING if math.isnan(value) else f"{value:.2f}"
    return str(value) if str(value) != "" else ""


def _display(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The columns to show (``df.attrs['display_columns']`` if set, else all) and their cells as text;
    the note column only if some row has a note."""
    columns = [c for c in df.attrs.get("display_columns", list(df.columns)) if c in df.columns]
    if NOTE in columns and not df[NOTE].astype(str).str.strip().any():
        columns.remove(NOTE)
    formats = df.attrs.get("formats", {})  # column -> format of its finite numbers (default: 2 decimals)

    def cell(column, value):
        if column in formats and isinstance(value, float) and math.isfinite(value):
            return formats[column].format(value)
        return _cell(value)

    return columns, [[cell(c, v) for c, v in zip(columns, row)] for row in df[columns].itertuples(index=False)]


def _numeric(df: pd.DataFrame, column: str) -> bool:
    return pd.api.types.is_numeric_dtype(df[column])


def to_markdown(df: pd.DataFrame, caption: str) -> str:
    """A GitHub Markdown table under its caption."""
    columns, cells = _display(df)

    def line(values):
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    rule = ["---:" if _numeric(df, c) else "---" for c in columns]
    return "\n".join([f"**{caption}**", "", line(columns), "| " + " | ".join(rule) + " |",
                      *(line(row) for row in cells)]) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``) with the caption above it."""
    columns, cells = _display(df)
    spec = "".join("r" if _numeric(df, c) or c == ACCURACY else "l" for c in columns)
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{latex_escape(caption)}}}",
             f"\\label{{tab:{label}}}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in columns) + r" \\", r"\midrule",
             *(" & ".join(latex_escape(v) for v in row) + r" \\" for row in cells),
             r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, out_prefix: str, caption: str) -> None:
    """Write ``<out_prefix>.csv``, ``.md`` and ``.tex``; all three appear only if all three were written."""
    label = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in str(out_prefix).replace("\\", "/")
                    .rsplit("/", 1)[-1])
    with store.atomic_output(f"{out_prefix}.csv") as csv, store.atomic_output(f"{out_prefix}.md") as md, \
            store.atomic_output(f"{out_prefix}.tex") as tex:
        df.to_csv(csv, index=False)
        md.write_text(to_markdown(df, caption), encoding="utf-8")
        tex.write_text(to_latex(df, caption, label), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# onset_vs_lr: a learning-rate sweep (``zigzag/onsets.py``)

RUN, LR, SEED, ONSET, EOS, FINAL_LOSS, DIVERGED, SLOPE, SLOPE_SD = (
    "run", "lr", "seed", "zigzag onset step", "step of 2/lr", "final loss", "diverged", "slope", "slope sd")
ONSET_COLUMNS = [RUN, LR, SEED, ONSET, EOS, FINAL_LOSS, DIVERGED, SLOPE, SLOPE_SD]
ONSET_DISPLAY = [RUN, LR, SEED, ONSET, EOS, FINAL_LOSS, DIVERGED, "slope of log onset vs log lr"]


def onset_table(points) -> pd.DataFrame:
    """One row per run and seed of a sweep: the zigzag onset step and the step of 2/lr ("-": none), the final
    training loss and whether it diverged, and the seed's slope of log onset against log lr; a last row "fit"
    with the mean and sample standard deviation of the seeds' slopes (``zigzag.onsets.fit_slopes`` states the
    fit rule: runs that never zigzag or diverged are left out)."""
    from zigzag.onsets import fit_slopes, load_sweep, slope_summary

    runs = load_sweep(points)
    slopes = fit_slopes(runs)
    mean, sd, n = slope_summary(slopes)

    def step(value):
        return MISSING if value is None else str(value)

    records = [{RUN: r.run, LR: r.lr, SEED: str(r.seed), ONSET: step(r.onset), EOS: step(r.eos_step),
                FINAL_LOSS: r.final_loss, DIVERGED: "yes" if r.diverged else "no",
                SLOPE: slopes.get(r.seed, math.nan), SLOPE_SD: math.nan} for r in runs]
    fit = MISSING if n == 0 else f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {sd:.2f}"
    records.append({RUN: f"fit over {n} seed(s)", LR: math.nan, SEED: MISSING, ONSET: MISSING, EOS: MISSING,
                    FINAL_LOSS: math.nan, DIVERGED: MISSING, SLOPE: mean, SLOPE_SD: sd})
    df = pd.DataFrame.from_records(records, columns=ONSET_COLUMNS)
    df.insert(len(df.columns), ONSET_DISPLAY[-1], [f"{s:.2f}" if math.isfinite(s) else MISSING
                                                   for s in df[SLOPE].iloc[:-1]] + [fit])
    df.attrs.update(display_columns=ONSET_DISPLAY, formats={LR: "{:.3g}", FINAL_LOSS: "{:.3g}"})
    return df

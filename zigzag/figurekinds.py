"""The figure kinds: one declaration per kind, which everything else iterates.

A kind says how a ``figures:`` entry of the config names its runs, which jobs of each run it reads (the
first seed, or every seed), which files of each job (trajectory and/or analysis) and which function of
``zigzag/figures.py`` draws it. From these follow the config's reference checks and the windows the
analysis keeps (``zigzag/configcheck.py``, ``zigzag/pipeline.py``), the inputs and the command of each
``figure_<id>`` rule (``pipeline.figure_inputs``, ``pipeline.figure_command``), the ``zigzag figure``
subcommands (``zigzag/cli.py``), the dispatch to the renderer (``FigureKind.builder``, which
``figures.render`` calls) and each kind's fields in the config's schema (``figure_schemas``, which
``zigzag.configcheck.load_schema`` adds to the ``figures`` section).

How an entry names its runs (``runs``), and what the renderer receives:

- ``run``: one run, ``run: NAME``. With ``seeds="first"``: the files of its first job, in the order of
  ``reads`` (``renderer(*files, title)``, CLI ``--trajectory T --analysis A``); with ``seeds="all"``: one
  curve labelled by the run's name (``renderer(curve, title)``, CLI ``--curve LABEL FILES...``).
- ``panels``: ``panels: [{run, label, step}]``, the first job of each, one window each
  (``renderer([(analysis, label, step), ...], title)``, CLI ``--panel ANALYSIS LABEL STEP``).
- ``curves``: ``curves: [{run, label}]``, every job of each run (``renderer([curve, ...], title)``, CLI
  ``--curve LABEL FILES...`` per curve).
- ``sweep``: ``sweep: NAME``, every job of each run of that sweep (``zigzag/sweeps.py``), one curve per run
  labelled by its name, as ``curves``. Its runs are known from the checked config (``pipeline.sweep_runs``);
  such a figure is a target of ``all_sweeps``, not of ``all_figures``.

A curve is ``(label, [files of one job, ...])``, one tuple of files (in the order of ``reads``) per seed.
A kind with ``windows`` takes the entry's ``steps`` (window steps, or ``auto``) as ``steps=``; the
analysis keeps those windows. A kind with ``front_door`` False is drawn by the target ``all`` but not by
``all_figures`` (``pipeline.figure_ids``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zigzag.settings import MAX_STEPS


@dataclass(frozen=True)
class FigureKind:
    name: str                   # the config's ``kind``
    help: str                   # one line of ``zigzag figure --help``
    runs: str                   # how the entry names its runs: run | panels | curves
    seeds: str                  # which jobs of each run: first | all
    reads: tuple[str, ...]      # the files of each job: trajectory, analysis
    renderer: str               # the function of zigzag.figures that returns the Figure
    windows: bool = False       # takes the entry's ``steps`` (the windows it draws)
    front_door: bool = True     # drawn by ``all_figures``; False: only by ``all`` (its runs cost more than they show)
    needs: str | None = None    # a run setting each of its runs must turn on (not false, not "none")

    @property
    def command(self) -> str:
        """The ``zigzag figure`` subcommand."""
        return self.name.replace("_", "-")

    def builder(self) -> Callable:
        """The function of ``zigzag.figures`` that ``renderer`` names: imported here, when a figure is drawn, so
        that planning (which reads this registry) imports no matplotlib."""
        from zigzag import figures

        return getattr(figures, self.renderer)


KINDS = {kind.name: kind for kind in (
    FigureKind("trajectory", "loss, mean correlation and h x h matrices (paper Figs. 1-6)",
               runs="run", seeds="first", reads=("trajectory", "analysis"), renderer="build_trajectory_figure",
               windows=True),
    FigureKind("sign_shift", "matrices with the %% of opposite signs (paper Fig. 8)",
               runs="panels", seeds="first", reads=("analysis",), renderer="build_sign_shift_figure"),
    FigureKind("warmup", "mean correlation with the warm-up lr on a twin axis (paper Fig. 7)",
               runs="run", seeds="all", reads=("trajectory", "analysis"), renderer="build_warmup_figure"),
    FigureKind("batch_sizes", "mean correlation for several batch sizes (paper Fig. 9)",
               runs="curves", seeds="all", reads=("trajectory", "analysis"), renderer="build_batch_size_figure"),
    FigureKind("schedules", "training loss and lr, GAWU vs WU (paper Fig. 10)",
               runs="curves", seeds="all", reads=("trajectory", "analysis"), renderer="build_schedules_figure"),
    FigureKind("sharpness", "sharpness with 2/lr, mean correlation and gradient-eigenvector cosine",
               runs="run", seeds="first", reads=("trajectory", "analysis"), renderer="build_sharpness_figure"),
    FigureKind("lag1", "correlation of adjacent gradients at every step, one line per curve",
               runs="curves", seeds="all", reads=("trajectory",), renderer="build_lag1_figure"),
    FigureKind("divergence", "parameter and loss distance of perturbed twins (the later panels) from a run (the "
               "first), log scale, with growth rates", runs="panels", seeds="first", reads=("trajectory", "analysis"),
               renderer="build_divergence_figure", front_door=False, needs="raw_parameters"),
    FigureKind("phase_diagram", "mean correlation over (step, lr) of a sweep, zigzag onset against lr",
               runs="sweep", seeds="all", reads=("trajectory", "analysis"), renderer="build_phase_diagram",
               front_door=False),
    FigureKind("layers", "adjacent correlation per layer over the steps, and each layer's sign flips in the zigzag "
               "(a run with per_layer)", runs="run", seeds="first", reads=("trajectory", "analysis"),
               renderer="build_layers_figure", needs="per_layer"),
)}
_STEP = {"type": "integer", "minimum": 0, "maximum": MAX_STEPS - 1}
# The fields of an entry of each form (``FigureKind.runs``) besides kind and title, as JSON schema; a kind with
# ``windows`` also takes ``steps``.
FORM_FIELDS = {
    "run": {"run": {"type": "string", "description": "a key of runs"}},
    "panels": {"panels": {"type": "array", "minItems": 1, "items": {
        "type": "object", "additionalProperties": False, "required": ["run", "label"], "properties": {
            "run": {"type": "string", "description": "a key of runs"},
            "step": {"description": "first step of the window, or auto (default): the deepest zigzag window",
                     "oneOf": [{"const": "auto"}, _STEP]},
            "label": {"type": "string"}}}}},
    "curves": {"curves": {"$ref": "#/$defs/labelled_runs"}},
    "sweep": {"sweep": {"type": "string", "description": "a key of sweeps"}},
}
WINDOWS_FIELD = {"steps": {
    "description": "first steps of the h x h matrices, or auto (default): a smooth, the deepest zigzag and the last "
                   "window, found from mean_mu (zigzag.analysis.auto_windows)",
    "oneOf": [{"const": "auto"}, {"type": "array", "items": _STEP, "minItems": 1}]}}
RUNS_FORMS = tuple(FORM_FIELDS)


def figure_schemas() -> list[dict]:
    """The fields of a ``figures`` entry of each kind, as the config schema's ``if kind ... then fields`` blocks:
    one block per form (and ``windows``), naming its kinds."""
    forms: dict[tuple[str, bool], list[str]] = {}
    for kind in KINDS.values():
        forms.setdefault((kind.runs, kind.windows), []).append(kind.name)
    return [{"if": {"properties": {"kind": {"enum": names}}},
             "then": {"required": [form], "additionalProperties": False, "properties": {
                 "kind": {}, "title": {}, **FORM_FIELDS[form], **(WINDOWS_FIELD if windows else {})}}}
            for (form, windows), names in forms.items()]


def kind_of(spec: dict) -> FigureKind:
    return KINDS[spec["kind"]]


def references(where: str, spec: dict):
    """(config path, run, window step or "auto" or None) for every run a figure entry names (none for a sweep's
    figure: ``pipeline.sweep_runs`` knows its runs)."""
    kind = kind_of(spec)
    if kind.runs == "run":
        steps = spec.get("steps", "auto") if kind.windows else [None]
        for step in ["auto"] if steps == "auto" else steps:
            yield where, spec["run"], step
    elif kind.runs == "panels":
        for i, panel in enumerate(spec["panels"]):
            yield f"{where}.panels.{i}", panel["run"], panel.get("step", "auto")
    elif kind.runs == "curves":
        for i, item in enumerate(spec["curves"]):
            yield f"{where}.curves.{i}", item["run"], None


def labelled_runs(spec: dict) -> list[dict]:
    """The entry's runs with their labels: panels or curves, or its one run labelled by its name."""
    kind = kind_of(spec)
    return [{"run": spec["run"], "label": spec["run"]}] if kind.runs == "run" else spec[kind.runs]

"""The ``zigzag`` command line: every workflow rule calls one of these subcommands.

A ``ZigzagError`` (bad input, missing or foreign file) is printed as one line ``zigzag: error: ...``
and exits with code 2; nothing already written is touched. Ctrl-C prints one line ``zigzag: interrupted
...`` and exits with code 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import tempfile

from zigzag.analysisconfig import AnalysisConfig
from zigzag.errors import Interrupted, ZigzagError
from zigzag.settings import MAX_SEED, add_flags, specs

MAX_THREADS = 1024  # more than any machine's cores; torch takes a C int


class Parser(argparse.ArgumentParser):
    """argparse whose errors are a ``ZigzagError`` (one line, exit 2), not a usage block and ``SystemExit``."""

    def error(self, message: str):
        raise ZigzagError(f"{self.prog}: {message} (see {self.prog} --help)")


def _train(args) -> int:
    from zigzag.runconfig import RunConfig, load_yaml

    values = {}
    if args.settings:
        try:
            values = json.loads(args.settings)
        except json.JSONDecodeError as err:
            raise ZigzagError(f"--settings is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise ZigzagError(f"--settings must be one JSON mapping of run settings, got {args.settings[:60]}")
    elif args.config:
        values = load_yaml(args.config, "--config") or {}
        if not isinstance(values, dict):
            raise ZigzagError(f"--config {args.config}: expected a mapping of run settings")
    for key, spec in specs(RunConfig).items():
        value = getattr(args, key, None)
        if value is None:
            continue
        if spec.type == "dict":  # the flag sets one key of the mapping
            if not isinstance(values.get(key, {}), dict):
                raise ZigzagError(f"invalid {key}={values[key]!r}: must be a mapping of keys to values")
            value = {**values.get(key, {}), spec.flag: value}
        values[key] = value
    config = RunConfig.from_dict(values)
    _set_threads(args.threads)

    from zigzag import gpulease, store
    from zigzag.checkpoints import check_run_paths
    from zigzag.distributed import join
    from zigzag.trainer import Trainer

    check_run_paths(args.out, [config.dataset, *([args.config] if args.config else [])])
    group = join(config.device)  # a torchrun launch: rank 0 alone holds the lock, writes and prints
    if not group.leader:
        sys.stdout = sys.stderr = open(os.devnull, "w")
    try:
        with store.output_lock(*[args.out][:group.leader]):  # before the GPU lease: a second writer stops at once
            lease = gpulease.lease_for(config.device, args.gpu_locks)  # held until this process exits (one per rank)
            status = Trainer(config, args.out, progress=not args.quiet, lease=lease).run()
    except Exception as err:
        if not isinstance(err, ZigzagError):  # a failure of this rank's own: its traceback shows
            sys.stderr = sys.__stderr__
        raise
    print(f"{args.out}: {status}")
    return 0


def _prepare(args) -> int:
    from zigzag.data import prepare

    if not 0 <= args.seed <= MAX_SEED:
        raise ZigzagError(f"invalid --seed {args.seed}: must be an integer in [0, {MAX_SEED}]")
    arrays = prepare(args.dataset, args.out, data_root=args.data_root, download=args.download,
                     train_size=args.train_size, seed=args.seed, from_path=args.from_path)
    print(f"{args.out}: {len(arrays.train_labels)} train / {len(arrays.test_labels)} test images "
          f"{tuple(arrays.train_images.shape[1:])} {arrays.train_images.dtype}, {arrays.num_classes} classes")
    return 0


def _inspect(args) -> int:
    from zigzag.filesummary import summary

    print(summary(args.file))
    return 0


def _analyze(args) -> int:
    from zigzag import store
    from zigzag.analysis import analyze
    from zigzag.analysisconfig import AnalysisConfig

    settings = AnalysisConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnalysisConfig)})
    settings.validate()
    store.check_outputs([args.out], [args.trajectory])
    traj = store.read_trajectory(args.trajectory)
    if "total_steps" not in traj.attrs:
        raise ZigzagError(f"{args.trajectory}: no attribute total_steps: not a trajectory of `zigzag train`; "
                          f"{store.TRAJECTORY_FIX}")
    windows, auto = settings.window_steps(int(traj.attrs["lags"]), int(traj.attrs["total_steps"]), args.trajectory)
    result = analyze(traj.steps, settings.h, windows, settings.smooth_above, settings.zigzag_below,
                     settings.eos_tolerance, schedule=traj.config.get("schedule") or {},
                     batches_per_epoch=int(traj.attrs.get("batches_per_epoch", 1)), auto=auto)
    config = {"trajectory": str(args.trajectory), "h": settings.h, "windows": windows, "auto_windows": auto,
              "smooth_above": settings.smooth_above, "zigzag_below": settings.zigzag_below,
              "eos_tolerance": settings.eos_tolerance}
    store.write_analysis(args.out, result, config, traj.attrs)
    rule = result.change_point_rule
    switch = ("none" if result.change_point_step is None else
              f"step {result.change_point_step} (epoch {result.change_point_epoch})")
    chosen = ", ".join(f"{role} {k}" for k, role in zip(result.window_steps, result.window_roles) if role)
    print(f"{args.out}: zigzag share of the loss decrease {result.zigzag_loss_share:.3f}, "
          f"{len(result.transitions)} phase changes, GAWU change point (h={rule['h']}, per {rule['unit']}): {switch}"
          + (f"; windows found: {chosen or 'none'}" if auto else ""))
    return 0


def _curves(specs: list[list[str]], reads: tuple[str, ...]) -> list[tuple[str, list[tuple[str, ...]]]]:
    """``--curve LABEL FILES [FILES ...]`` -> (label, [files per seed]), FILES one file of each of ``reads``."""
    curves, n = [], len(reads)
    for label, *files in specs:
        if not files or len(files) % n:
            what = "pairs of trajectory and analysis files" if n == 2 else f"{' and '.join(reads)} files"
            raise ZigzagError(f"--curve {label!r}: give {what}, one {'pair' if n == 2 else 'set'} per seed")
        curves.append((label, [tuple(files[i:i + n]) for i in range(0, len(files), n)]))
    return curves


def _figure(args) -> int:
    """Read the inputs of the figure's kind (``zigzag/figurekinds.py``) from the flags and render it."""
    from zigzag import figures, store
    from zigzag.figurekinds import KINDS

    kind = KINDS[args.figure_kind]
    if kind.runs == "panels":
        inputs = [(*files, label, step if step == "auto" else _int(step, "--panel STEP"))
                  for *files, label, step in args.panel]
        paths = [path for *files, _, _ in args.panel for path in files]
    elif kind.seeds == "first":
        inputs = paths = [getattr(args, name) for name in kind.reads]
    else:
        curves = _curves(args.curve, kind.reads)
        inputs = curves[0] if kind.runs == "run" else curves
        paths = [path for _, *files in args.curve for path in files]
    store.check_outputs([args.png, args.pdf], paths)
    figures.check_text(args.title, "--title")
    labels = [label for *_, label, _ in getattr(args, "panel", None) or []]
    for label in labels + [label for label, *_ in getattr(args, "curve", None) or []]:
        figures.check_text(label, "label")
    options = {}
    if kind.windows:
        options["steps"] = None if args.steps is None else [s if s == "auto" else _int(s, "--steps")
                                                            for s in args.steps.split(",")]
    figures.render(kind.name, inputs, args.title, args.png, args.pdf, **options)
    print(f"{args.png}, {args.pdf}")
    return 0


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ZigzagError(f"invalid {what} {value!r}: a step number or auto") from None


def _claims_spec(text: str) -> dict:
    """``--spec``: {"thresholds": {name: number}, "seeds": [int, ...], "overall": rule,
    "groups": {group: [[[job, trajectory, analysis] or null per seed], ...]}}."""
    from zigzag.claims import check_thresholds

    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise ZigzagError(f"--spec is not valid JSON: {err}") from None
    form = ('{"thresholds": {...}, "seeds": [0, ...], "overall": "every_seed", '
            '"groups": {group: [[[job, trajectory, analysis] or null per seed, ...], ...]}}')
    if not (isinstance(spec, dict) and isinstance(spec.get("groups"), dict) and isinstance(spec.get("thresholds"), dict)
            and isinstance(spec.get("seeds"), list)
            and all(isinstance(s, int) and not isinstance(s, bool) for s in spec["seeds"])):
        raise ZigzagError(f"--spec must be a JSON mapping {form}")
    spec.setdefault("overall", "every_seed")
    try:
        check_thresholds(spec["thresholds"])
    except ZigzagError as err:
        raise ZigzagError(f"--spec: {err}") from None
    for group, runs in spec["groups"].items():
        if not (isinstance(runs, list) and all(isinstance(seeds, list) and all(
                s is None or (isinstance(s, list) and len(s) == 3 and all(isinstance(x, str) for x in s))
                for s in seeds) for seeds in runs)):
            raise ZigzagError(f"--spec groups.{group}: must be a list of runs, each a list of [job, trajectory, "
                              f"analysis] (or null) per seed")
    return spec


def _table(args) -> int:
    from zigzag import store, tables
    from zigzag.pipeline import TABLE_EXTS

    outputs = [f"{args.out}.{ext}" for ext in TABLE_EXTS]
    if args.kind == "schedules":
        rows = [(label, files) for label, *files in args.row]
        store.check_outputs(outputs, [path for _, files in rows for path in files])
        tables.write_table(tables.schedule_table(rows), args.out, args.caption)
    elif args.kind == "onset-vs-lr":
        points = _curves(args.point, ("trajectory", "analysis"))
        store.check_outputs(outputs, [path for _, *files in args.point for path in files])
        tables.write_table(tables.onset_table(points), args.out, args.caption)
    else:
        from zigzag.claims import claims_table

        spec = _claims_spec(args.spec)
        store.check_outputs(outputs, [path for runs in spec["groups"].values() for seeds in runs
                                      for entry in seeds if entry is not None for path in entry[1:]])
        df = claims_table(spec["groups"], spec["thresholds"], spec["seeds"], spec["overall"])
        tables.write_table(df, args.out, args.caption)
        print(df[["claim", *(c for c in df.columns if c.startswith("seed ")), "verdict"]].to_string(index=False))
    print(f"{args.out}.csv, .md, .tex")
    return 0


def _set_threads(threads: int | None) -> None:
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise ZigzagError(f"invalid --threads {threads}: must be an integer in [1, {MAX_THREADS}]")
    if threads:
        import torch

        torch.set_num_threads(threads)


def build_parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """The command line; ``train_flags=False`` leaves out the flags of ``zigzag train``, whose declaration
    (``RunConfig``) imports torch, for the other subcommands."""
    parser = Parser(prog="zigzag", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    from zigzag.data import SOURCES, TORCHVISION_SOURCES

    p = sub.add_parser("prepare", help="write a dataset cache (zigzag-dataset HDF5)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset",
                        help="; ".join(f"{name} ({source.origin})" for name, source in SOURCES.items()))
    source.add_argument("--from", dest="from_path", metavar="PATH",
                        help="your own data: an .npz file (x_train, y_train, x_test, y_test) or an image folder "
                             "(train/<class>/*, test/<class>/*); see zigzag/userdata.py")
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", help=f"folder with the torchvision files ({', '.join(TORCHVISION_SOURCES)})")
    p.add_argument("--download", action="store_true", help="download through torchvision (needs internet)")
    p.add_argument("--train-size", type=int, help="stratified subset of the training split")
    p.add_argument("--seed", type=int, default=0,
                   help=f"seed of the split and the subset; an integer in [0, {MAX_SEED}]")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("train", help="train one run and write its trajectory (zigzag-trajectory HDF5)")
    p.add_argument("--config", help="YAML file with run settings (same keys as the flags, underscores)")
    p.add_argument("--settings", help="run settings as one JSON mapping (what the workflow passes)")
    p.add_argument("--out", required=True, help="trajectory file to write")
    if train_flags:
        from zigzag.runconfig import RunConfig

        add_flags(p, RunConfig)
    p.add_argument("--threads", type=int, help=f"CPU threads for torch; an integer in [1, {MAX_THREADS}]")
    p.add_argument("--gpu-locks", default=os.path.join(tempfile.gettempdir(), "zigzag-gpu-locks"),
                   help="folder of the per-GPU lease files, shared by the jobs of one machine (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_train)

    p = sub.add_parser("analyze", help="mean correlation, windows, phases from a trajectory (zigzag-analysis)")
    p.add_argument("trajectory")
    p.add_argument("--out", required=True)
    add_flags(p, AnalysisConfig, defaults=True)
    p.set_defaults(func=_analyze)

    p = sub.add_parser("figure", help="render one figure (PNG and PDF)")
    kinds = p.add_subparsers(dest="kind", required=True)
    from zigzag.figurekinds import KINDS

    for kind in KINDS.values():  # the flags follow what the kind reads
        k = kinds.add_parser(kind.command, help=kind.help)
        k.add_argument("--title", required=True)
        k.add_argument("--png", required=True)
        k.add_argument("--pdf", required=True)
        files = tuple(name.upper() for name in kind.reads)
        if kind.runs == "panels":
            k.add_argument("--panel", nargs=len(files) + 2, action="append", required=True,
                           metavar=(*files, "LABEL", "STEP"),
                           help="STEP: a window step, or auto: the deepest zigzag window")
        elif kind.seeds == "first":
            for name in kind.reads:
                k.add_argument(f"--{name}", required=True)
        else:
            k.add_argument("--curve", nargs="+", action="append", required=True, metavar=f"LABEL {' '.join(files)}",
                           help=f"a label, then the {' and '.join(kind.reads)} file of each seed")
        if kind.windows:
            k.add_argument("--steps", help="windows to draw: steps like 5,134 and/or auto (the windows the analysis "
                                           "found); default every analysed window")
        k.set_defaults(func=_figure, figure_kind=kind.name)

    p = sub.add_parser("table", help="write a table as CSV, Markdown and LaTeX")
    kinds = p.add_subparsers(dest="kind", required=True)
    k = kinds.add_parser("schedules", help="final test accuracy and change point per schedule (paper Table 1)")
    k.add_argument("--row", nargs="+", action="append", required=True, metavar="LABEL TRAJECTORY",
                   help="a label, then one trajectory per seed")
    k.add_argument("--caption", required=True)
    k.add_argument("--out", required=True, help="output prefix: writes .csv, .md and .tex")
    k.set_defaults(func=_table)
    k = kinds.add_parser("onset-vs-lr", help="zigzag onset, step of 2/lr and final loss per lr of a sweep")
    k.add_argument("--point", nargs="+", action="append", required=True, metavar="RUN TRAJECTORY ANALYSIS",
                   help="a run of the sweep, then the trajectory and analysis file of each seed")
    k.add_argument("--caption", required=True)
    k.add_argument("--out", required=True, help="output prefix: writes .csv, .md and .tex")
    k.set_defaults(func=_table)
    k = kinds.add_parser("claims", help="which of the paper's claims hold in these runs")
    k.add_argument("--spec", required=True,
                   help='JSON {"thresholds": {...}, "seeds": [0, 1, 2], "overall": "every_seed", '
                        '"groups": {group: [[[job, trajectory, analysis] per seed], ...]}}')
    k.add_argument("--caption", default="The paper's claims, checked on these runs")
    k.add_argument("--out", required=True, help="output prefix: writes .csv, .md and .tex")
    k.set_defaults(func=_table)

    p = sub.add_parser("inspect", help="summarise any zigzag HDF5 file")
    p.add_argument("file")
    p.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(train_flags=argv[:1] == ["train"]).parse_args(argv)
    except ZigzagError as err:
        print(f"zigzag: error: {err}", file=sys.stderr)
        return 2
    # Errors that h5py meets while freeing objects are "ignored" with tracebacks (through both hooks); keep
    # them until the command succeeds (then show them), drop them after an error (its one line says it).
    held = []
    sys.unraisablehook, sys.excepthook = held.append, lambda *exc: held.append(exc)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not after main
        sys.unraisablehook, sys.excepthook = sys.__unraisablehook__, sys.__excepthook__
        for item in held:
            sys.excepthook(*item) if isinstance(item, tuple) else sys.unraisablehook(item)
        return code
    except ZigzagError as err:
        print(f"zigzag: error: {err}", file=sys.stderr)
    except (KeyboardInterrupt, Interrupted) as err:  # temporary files are gone; finished outputs and checkpoints kept
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        print(f"zigzag: {str(err) or 'interrupted'}", file=sys.stderr, flush=True)
        os._exit(130)  # like a kill: no HDF5 shutdown of a file a background writer may still be using
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        print("zigzag: error: the output pipe was closed before all was written (e.g. by `| head`)", file=sys.stderr)
    except (OSError, RuntimeError) as err:  # disk full, quota, I/O error: files already there are kept
        if isinstance(err, RuntimeError) and "errno =" not in str(err):  # HDF5's I/O errors name the errno
            raise
        print(f"zigzag: error: {_write_failure(err)}; free disk space (or fix the file system) and rerun: "
              f"finished outputs are kept", file=sys.stderr, flush=True)
        os._exit(2)  # after a failed write HDF5 cannot shut down cleanly (it retries the writes, then crashes)
    finally:
        sys.unraisablehook, sys.excepthook = sys.__unraisablehook__, sys.__excepthook__
    return 2


def _write_failure(err: Exception) -> str:
    """One line for an OSError (or HDF5's multi-line write error): the file and the system's reason."""
    text = " ".join(str(err).split())
    if getattr(err, "errno", None):
        reason = os.strerror(err.errno)
        if str(err.strerror).startswith(reason):  # zigzag's own reasons add e.g. the space needed and free
            reason = err.strerror
    else:
        reason = next(iter(re.findall(r"error message = '([^']*)'", text)), text[:200])
    filename = getattr(err, "filename", None) or next(iter(re.findall(r"filename = '([^']*)'", text)), None)
    return f"{filename}: {reason}" if filename else reason

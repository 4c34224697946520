"""The ``zigzag`` command line: every workflow rule calls one of these subcommands.

A ``ZigzagError`` (bad input, missing or foreign file) is printed as one line ``zigzag: error: ...``
and exits with code 2; nothing already written is touched.
"""

from __future__ import annotations

import argparse
import json
import sys

from zigzag.errors import ZigzagError

TRAIN_FLAGS = {  # flag -> (RunConfig key, type, help)
    "--dataset": ("dataset", str, "prepared dataset file (zigzag prepare)"),
    "--model": ("model", str, "cnn, vgg16, resnet18 or resnet34"),
    "--width": ("width", float, "channel width multiplier (1 = the standard CIFAR model)"),
    "--lr": ("lr", float, "learning rate (> 0)"),
    "--steps": ("steps", int, "GD steps (epochs)"),
    "--optimizer": ("optimizer", str, "gd (full batch) or sgd"),
    "--epochs": ("epochs", int, "SGD epochs"),
    "--batch-size": ("batch_size", int, "SGD batch size"),
    "--base-batch": ("base_batch", int, "SGD linear scaling: lr x batch_size / base_batch"),
    "--momentum": ("momentum", float, "SGD momentum"),
    "--weight-decay": ("weight_decay", float, "weight decay"),
    "--lags": ("lags", int, "lags L of the gradient statistics (window h <= L + 1)"),
    "--micro-batch": ("micro_batch", int, "micro-batch size of the gradient accumulation"),
    "--seed": ("seed", int, "seed of the initialisation and the SGD batches"),
    "--eval-every": ("eval_every", int, "test loss/accuracy every N steps"),
    "--raw-gradients": ("raw_gradients", str, "none, every:N or a list of steps like 0,5,10"),
    "--raw-dtype": ("raw_dtype", str, "float32 or float16"),
    "--raw-compression": ("raw_compression", str, "none, gzip or lzf"),
    "--checkpoint-every": ("checkpoint_every", int, "checkpoint every N steps (resume after a kill)"),
    "--device": ("device", str, "auto, cpu or cuda"),
    "--precision": ("precision", str, "fp32, tf32 or bf16: the arithmetic on a GPU (default tf32; on a CPU "
                    "all three compute in float32)"),
}


def _train(args) -> int:
    import yaml

    from zigzag.runconfig import RunConfig

    values = {}
    if args.settings:
        try:
            values = json.loads(args.settings)
        except json.JSONDecodeError as err:
            raise ZigzagError(f"--settings is not valid JSON: {err}") from None
    elif args.config:
        try:
            with open(args.config) as f:
                values = yaml.safe_load(f) or {}
        except OSError as err:
            raise ZigzagError(f"cannot read --config {args.config}: {err.strerror}") from None
        if not isinstance(values, dict):
            raise ZigzagError(f"--config {args.config}: expected a mapping of run settings")
    for flag, (key, _, _) in TRAIN_FLAGS.items():
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    if args.sharpness is not None:
        values["sharpness"] = {**values.get("sharpness", {}), "every": args.sharpness}
    if args.batch_norm is not None:
        values["batch_norm"] = args.batch_norm
    if args.compile is not None:
        values["compile"] = args.compile
    config = RunConfig.from_dict(values)
    _set_threads(args.threads)

    from zigzag.trainer import Trainer

    status = Trainer(config, args.out, progress=not args.quiet).run()
    print(f"{args.out}: {status}")
    return 0


def _prepare(args) -> int:
    from zigzag.data import prepare

    arrays = prepare(args.dataset, args.out, data_root=args.data_root, download=args.download,
                     train_size=args.train_size, seed=args.seed)
    print(f"{args.out}: {len(arrays.train_labels)} train / {len(arrays.test_labels)} test images "
          f"{tuple(arrays.train_images.shape[1:])}")
    return 0


def _inspect(args) -> int:
    from zigzag.inspect import summary

    print(summary(args.file))
    return 0


def _analyze(args) -> int:
    from zigzag import store
    from zigzag.analysis import analyze
    from zigzag.runconfig import parse_step_selection

    traj = store.read_trajectory(args.trajectory)
    lags = int(traj.attrs["lags"])
    if not 2 <= args.h <= lags + 1:
        raise ZigzagError(f"invalid h={args.h}: must be in 2..lags+1 = {lags + 1} for {args.trajectory}")
    if args.zigzag_below > args.smooth_above:
        raise ZigzagError(f"invalid thresholds: zigzag_below={args.zigzag_below} > smooth_above={args.smooth_above}")
    total = int(traj.attrs["total_steps"])
    windows = parse_step_selection(args.windows, total, "windows") or set()
    if isinstance(windows, int):
        windows = set(range(0, total, windows))
    result = analyze(traj.steps, args.h, sorted(windows), args.smooth_above, args.zigzag_below, args.eos_tolerance)
    config = {"trajectory": str(args.trajectory), "h": args.h, "windows": sorted(windows),
              "smooth_above": args.smooth_above, "zigzag_below": args.zigzag_below,
              "eos_tolerance": args.eos_tolerance}
    store.write_analysis(args.out, result, config, traj.attrs)
    print(f"{args.out}: zigzag share of the loss decrease {result.zigzag_loss_share:.3f}, "
          f"{len(result.transitions)} phase changes, GAWU change point {result.change_point}")
    return 0


def _curves(specs: list[list[str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """``--curve LABEL TRAJ ANALYSIS [TRAJ ANALYSIS ...]`` -> (label, [(trajectory, analysis) per seed])."""
    curves = []
    for label, *files in specs:
        if not files or len(files) % 2:
            raise ZigzagError(f"--curve {label!r}: give pairs of trajectory and analysis files, one pair per seed")
        curves.append((label, list(zip(files[::2], files[1::2]))))
    return curves


def _figure(args) -> int:
    from zigzag import figures

    if args.kind == "trajectory":
        figures.trajectory_figure(args.trajectory, args.analysis, args.png, args.pdf, args.title)
    elif args.kind == "sharpness":
        figures.sharpness_figure(args.trajectory, args.analysis, args.png, args.pdf, args.title)
    elif args.kind == "sign-shift":
        panels = [(path, label, int(step)) for path, label, step in args.panel]
        figures.sign_shift_figure(panels, args.png, args.pdf, args.title)
    elif args.kind == "warmup":
        figures.warmup_figure(_curves(args.curve)[0], args.png, args.pdf, args.title)
    elif args.kind == "batch-sizes":
        figures.batch_size_figure(_curves(args.curve), args.png, args.pdf, args.title)
    else:
        figures.schedules_figure(_curves(args.curve), args.png, args.pdf, args.title)
    print(f"{args.png}, {args.pdf}")
    return 0


def _table(args) -> int:
    from zigzag import tables

    if args.kind == "schedules":
        rows = [(label, files) for label, *files in args.row]
        tables.write_table(tables.schedule_table(rows), args.out, args.caption)
    else:
        from zigzag.claims import claims_table

        try:
            spec = json.loads(args.spec)
        except json.JSONDecodeError as err:
            raise ZigzagError(f"--spec is not valid JSON: {err}") from None
        df = claims_table(spec["groups"], spec["thresholds"])
        tables.write_table(df, args.out, args.caption)
        print(df[["claim", "verdict"]].to_string(index=False))
    print(f"{args.out}.csv, .md, .tex")
    return 0


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zigzag", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="write a dataset cache (zigzag-dataset HDF5)")
    p.add_argument("--dataset", required=True, help="mnist5k (embedded), mnist, cifar10 or svhn")
    p.add_argument("--out", required=True)
    p.add_argument("--data-root", help="folder with the torchvision files (mnist, cifar10, svhn)")
    p.add_argument("--download", action="store_true", help="download through torchvision (needs internet)")
    p.add_argument("--train-size", type=int, help="stratified subset of the training split")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the subset")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("train", help="train one run and write its trajectory (zigzag-trajectory HDF5)")
    p.add_argument("--config", help="YAML file with run settings (same keys as the flags, underscores)")
    p.add_argument("--settings", help="run settings as one JSON mapping (what the workflow passes)")
    p.add_argument("--out", required=True, help="trajectory file to write")
    for flag, (key, typ, help_) in TRAIN_FLAGS.items():
        p.add_argument(flag, dest=key, type=typ, help=help_)
    p.add_argument("--batch-norm", dest="batch_norm", action=argparse.BooleanOptionalAction,
                   help="BatchNorm in the cnn model")
    p.add_argument("--compile", dest="compile", action=argparse.BooleanOptionalAction,
                   help="compile the model's forward+backward with torch.compile (default off)")
    p.add_argument("--sharpness", help="top Hessian eigenvalue at every:K steps or a list of steps")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_train)

    p = sub.add_parser("analyze", help="mean correlation, windows, phases from a trajectory (zigzag-analysis)")
    p.add_argument("trajectory")
    p.add_argument("--out", required=True)
    p.add_argument("--h", type=int, default=5, help="window size (<= lags + 1)")
    p.add_argument("--windows", default="none", help="steps k whose h x h matrices to keep: 5,675,1490 or every:N")
    p.add_argument("--smooth-above", type=float, default=0.5, help="mean_mu above this: smooth")
    p.add_argument("--zigzag-below", type=float, default=-0.5, help="mean_mu below this: zigzag")
    p.add_argument("--eos-tolerance", type=float, default=0.1,
                   help="sharpness counts as at 2/lr once >= (1 - this) * 2/lr")
    p.set_defaults(func=_analyze)

    p = sub.add_parser("figure", help="render one figure (PNG and PDF)")
    kinds = p.add_subparsers(dest="kind", required=True)
    figure_kinds = {
        "trajectory": "loss, mean correlation and h x h matrices (paper Figs. 1-6)",
        "sign-shift": "matrices with the %% of opposite signs (paper Fig. 8)",
        "warmup": "mean correlation with the warm-up lr on a twin axis (paper Fig. 7)",
        "batch-sizes": "mean correlation for several batch sizes (paper Fig. 9)",
        "schedules": "training loss and lr, GAWU vs WU (paper Fig. 10)",
        "sharpness": "sharpness with 2/lr, mean correlation and gradient-eigenvector cosine",
    }
    for kind, help_ in figure_kinds.items():
        k = kinds.add_parser(kind, help=help_)
        k.add_argument("--title", required=True)
        k.add_argument("--png", required=True)
        k.add_argument("--pdf", required=True)
        if kind in ("trajectory", "sharpness"):
            k.add_argument("--trajectory", required=True)
            k.add_argument("--analysis", required=True)
        elif kind == "sign-shift":
            k.add_argument("--panel", nargs=3, action="append", required=True, metavar=("ANALYSIS", "LABEL", "STEP"))
        else:
            k.add_argument("--curve", nargs="+", action="append", required=True,
                           metavar="LABEL TRAJECTORY ANALYSIS", help="a label, then a trajectory and analysis per seed")
        k.set_defaults(func=_figure)

    p = sub.add_parser("table", help="write a table as CSV, Markdown and LaTeX")
    kinds = p.add_subparsers(dest="kind", required=True)
    k = kinds.add_parser("schedules", help="final test accuracy and change point per schedule (paper Table 1)")
    k.add_argument("--row", nargs="+", action="append", required=True, metavar="LABEL TRAJECTORY",
                   help="a label, then one trajectory per seed")
    k.add_argument("--caption", required=True)
    k.add_argument("--out", required=True, help="output prefix: writes .csv, .md and .tex")
    k.set_defaults(func=_table)
    k = kinds.add_parser("claims", help="which of the paper's claims hold in these runs")
    k.add_argument("--spec", required=True,
                   help='JSON {"thresholds": {...}, "groups": {group: [[[job, trajectory, analysis], ...], ...]}}')
    k.add_argument("--caption", default="The paper's claims, checked on these runs")
    k.add_argument("--out", required=True, help="output prefix: writes .csv, .md and .tex")
    k.set_defaults(func=_table)

    p = sub.add_parser("inspect", help="summarise any zigzag HDF5 file")
    p.add_argument("file")
    p.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ZigzagError as err:
        print(f"zigzag: error: {err}", file=sys.stderr)
        return 2

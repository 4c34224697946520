"""The sharpness solver against ARPACK: cost, accuracy and the step where sharpness reaches 2/lr.

Trains default-config runs (config.yaml) and, at every step where the run solves for the sharpness,
also solves the same Hessian (same parameters, same loss, same products) with

- ``arpack`` (at the grid's steps, 0, K, 2K, ... of ``every:K``, the sampling before refinement):
  ``scipy.sparse.linalg.eigsh`` as zigzag solved before its own Lanczos (which="LA", tol 1e-3, a basis
  of 20 vectors cold and 8 warm-started from its own previous eigenvector, 100 restarts at most): the
  "before" column;
- ``reference`` (``--reference``): ``eigsh`` at tol 1e-10 (10 vectors, started from zigzag's vector),
  the tight value every recorded lambda_max is compared with.

The trajectory itself records zigzag's solve (``zigzag.sharpness``), so the run is the pipeline's. Prints,
per run and seed: the solves, Hessian-vector products, zigzag's largest relative error against the
reference, and the first sampled step with sharpness >= (1 - eos_tolerance) 2/lr (the analysis's
``eos_step``) by either solver on the same sampling, with the last sample before it. Every solve is
written to ``--out``/solves.csv.

    python benchmarks/bench_sharpness_solver.py [--runs cnn_lr0.1,...] [--seeds 0,1,2] [--reference]
        [--no-arpack] [--every every:10] [--threads N] [--out DIR]
    python benchmarks/bench_sharpness_solver.py --table DIR/solves.csv     # every solve, as Markdown
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from zigzag import analysis, data, store
from zigzag.runconfig import RunConfig
from zigzag.sharpness import SharpnessTracker, hessian_vector_product
from zigzag.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
EOS_TOLERANCE = 0.1  # the analysis default (zigzag.analysis.analyse)


def arpack(hvp, dim: int, v0: np.ndarray | None, tol: float, ncv: int, seed: int) -> tuple[float, np.ndarray, int]:
    """eigsh's largest algebraic eigenpair of v -> hvp(v) and the products it took."""
    count = 0

    def matvec(x):
        nonlocal count
        count += 1
        return hvp(torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(-1))).double().cpu().numpy()

    start = np.random.default_rng(seed).standard_normal(dim) if v0 is None else v0
    operator = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    try:
        values, vectors = eigsh(operator, k=1, which="LA", v0=start, tol=tol, ncv=min(dim, ncv), maxiter=100)
        return float(values[0]), vectors[:, 0], count
    except ArpackNoConvergence as err:
        values = err.eigenvalues
        return (float(values[0]) if len(values) else float("nan")), start, count


class ComparingTracker(SharpnessTracker):
    """A run's sharpness solves, each also run by ARPACK (and the tight reference) on the same Hessian."""

    def __init__(self, trainer: Trainer, run: str, with_arpack: bool, with_reference: bool):
        super().__init__(trainer.config, trainer.data.train_x, trainer.data.train_y, trainer.total_steps, run)
        self.config, self.device, self.n_params = trainer.config, trainer.device, trainer.n_params
        self.run_name, self.with_arpack, self.with_reference = run, with_arpack, with_reference
        self.arpack_vector: np.ndarray | None = None
        self.solves: list[dict] = []

    def measure(self, model: torch.nn.Module, k: int, lr: float, grad: torch.Tensor) -> dict:
        row = super().measure(model, k, lr, grad)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            return hessian_vector_product(model, self.x, self.y, v.to(self.device), self.config.micro_batch)

        solve = {"run": self.run_name, "seed": self.config.seed, "step": k, "lr": lr,
                 "zigzag": row["sharpness"], "zigzag_hvps": row["sharpness_hvps"],
                 "zigzag_residual": row["sharpness_residual"], "zigzag_converged": row["sharpness_converged"]}
        if self.with_arpack and self.steps.on_grid(k):  # where the grid alone would have solved
            cold = self.arpack_vector is None
            value, self.arpack_vector, count = arpack(hvp, self.n_params, self.arpack_vector, 1e-3,
                                                      20 if cold else 8, self.config.seed)
            solve.update(arpack=value, arpack_hvps=count)
        if self.with_reference:
            start = self.eigenvector.double().cpu().numpy()
            value, _, count = arpack(hvp, self.n_params, start, 1e-10, 10, self.config.seed)
            solve.update(reference=value, reference_hvps=count)
        self.solves.append(solve)
        print(" ".join(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}"
                       for key, value in solve.items()), flush=True)
        return row


def eos_bracket(steps: list[int], values: list[float], lrs: list[float]) -> tuple[int | None, int | None]:
    """(first sampled step with value >= (1 - EOS_TOLERANCE) 2/lr, the sample before it)."""
    series = np.full(max(steps) + 1, np.nan)
    lr = np.full(max(steps) + 1, np.nan)
    series[steps], lr[steps] = values, lrs
    step = analysis.edge_of_stability_step(series, lr, EOS_TOLERANCE)
    before = [s for s in steps if step is not None and s < step]
    return step, (before[-1] if before else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="cnn_lr0.1,resnet18_lr0.1,vgg16_lr0.01")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--reference", action="store_true", help="also solve at tol 1e-10 (the tight reference)")
    parser.add_argument("--no-arpack", action="store_true", help="skip the ARPACK (before) solve")
    parser.add_argument("--every", help="override the runs' sharpness sampling (e.g. every:10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("sharpness-solver"))
    parser.add_argument("--table", type=Path, metavar="CSV", help="print an earlier run's solves.csv as Markdown")
    args = parser.parse_args()
    if args.table:
        print_table(args.table)
        return
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    solves = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.runs.split(","):
            run = config["runs"][name]
            spec = config["datasets"][run["dataset"]]
            dataset = folder / f"{run['dataset']}.h5"
            if not dataset.exists():
                data.prepare(spec["source"], str(dataset), train_size=spec["train_size"], seed=spec["seed"])
            for seed in (int(s) for s in args.seeds.split(",")):
                sharpness = {**run["sharpness"], **({"every": args.every} if args.every else {})}
                settings = {**run, "dataset": str(dataset), "seed": seed, "sharpness": sharpness,
                            "checkpoint_every": 10**6}
                settings.pop("seeds", None)
                out = folder / f"{name}_{seed}.h5"
                trainer = Trainer(RunConfig.from_dict(settings), out, progress=False)
                trainer.sharpness = tracker = ComparingTracker(trainer, name, not args.no_arpack, args.reference)
                trainer.run()
                store.read_trajectory(out)  # the run completed and its file reads back
                solves += tracker.solves
                report(tracker.solves, run["sharpness"]["every"])
    with open(args.out / "solves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({key for s in solves for key in s}))
        writer.writeheader()
        writer.writerows(solves)
    print(f"every solve: {args.out / 'solves.csv'}")


def report(solves: list[dict], grid: str) -> None:
    """One line per run and seed: zigzag on all its solves, and zigzag and ARPACK on the grid's solves."""
    run, seed = solves[0]["run"], solves[0]["seed"]
    every = int(grid.split(":")[1])
    line = f"{run} seed {seed}: {len(solves)} solves"
    for method, where in (("zigzag", "all"), ("zigzag", "grid"), ("arpack", "grid")):
        chosen = [s for s in solves if method in s and (where == "all" or s["step"] % every == 0)]
        if not chosen:
            continue
        hvps = [s[f"{method}_hvps"] for s in chosen]
        eos, before = eos_bracket([s["step"] for s in chosen], [s[method] for s in chosen], [s["lr"] for s in chosen])
        line += (f" | {method} ({where}, {len(chosen)}): {int(sum(hvps))} HVPs (cold {int(hvps[0])}, warm median "
                 f"{np.median(hvps[1:]):g}), eos_step {eos} (sample before: {before})")
    if "reference" in solves[0]:
        errors = [abs(s["zigzag"] - s["reference"]) / abs(s["reference"]) for s in solves]
        line += f" | zigzag vs reference: max rel. error {max(errors):.2e}"
        on_grid = [s for s in solves if "arpack" in s]
        if on_grid:
            line += f", arpack {max(abs(s['arpack'] - s['reference']) / abs(s['reference']) for s in on_grid):.2e}"
    print(line, flush=True)


def print_table(path: Path) -> None:
    """Every solve of a solves.csv as a Markdown table (relative errors against the reference, else ARPACK)."""
    with open(path, newline="") as f:
        solves = list(csv.DictReader(f))
    against = "reference" if solves and solves[0].get("reference") else "arpack"
    print(f"| run | seed | step | 2/lr | zigzag | HVPs | residual | {against} | relative error | ARPACK HVPs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in solves:
        value = float(s["zigzag"])
        truth, error = "-", "-"
        if s.get(against):
            truth, error = f"{float(s[against]):.6g}", f"{abs(value - float(s[against])) / abs(float(s[against])):.1e}"
        print(f"| {s['run']} | {s['seed']} | {s['step']} | {2 / float(s['lr']):g} | {value:.5g} | {s['zigzag_hvps']} | "
              f"{float(s['zigzag_residual']):.1e} | {truth} | {error} | {s.get('arpack_hvps') or '-'} |")


if __name__ == "__main__":
    main()

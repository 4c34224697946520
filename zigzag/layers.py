"""The gradient geometry per layer, read from a trajectory with ``per_layer`` and its analysis (no matplotlib).

Tensors are grouped by module: the tensors of one module (``features.0.weight`` and ``features.0.bias``: the
name without its last part) form one layer, in network order (``model.parameters()`` order of their first
tensor). Grouping is exact: a layer's dot products are the sums of its tensors' (``/steps/layer_dot``), and its
opposite-sign share is its tensors' shares weighted by their sizes. Per layer L and step k:

    mu_L(k-1, k) = layer_dot[k, L, 1] / sqrt(layer_dot[k, L, 0] layer_dot[k-1, L, 0])   (adjacent correlation)

The zigzag windows are the analysis's: [k, k + h - 1] for every step k in the zigzag phase; the adjacent pairs
inside them are those (m - 1, m) with both steps in one such window. Over those pairs, per layer: the mean
adjacent correlation and the mean opposite-sign share; a layer zigzags with the run if its mean adjacent
correlation is below the analysis's ``zigzag_below``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from zigzag import store
from zigzag.analysis import ZIGZAG
from zigzag.errors import ZigzagError


@dataclass
class LayerData:
    names: list[str]            # one per layer (module), network order
    sizes: np.ndarray           # parameters per layer
    adjacent_mu: np.ndarray     # [layers, K]: mu_L(k-1, k), NaN at k = 0
    zigzag_pairs: np.ndarray    # [K] bool: step m ends an adjacent pair inside a zigzag window
    zigzag_mu: np.ndarray       # [layers]: mean adjacent correlation over those pairs (NaN without any)
    zigzag_flips: np.ndarray    # [layers]: mean opposite-sign share at lag 1 over those pairs
    zigzag_below: float         # the analysis's zigzag threshold

    @property
    def below(self) -> np.ndarray:
        """Per layer: its mean adjacent correlation in the zigzag windows is below the zigzag threshold."""
        return self.zigzag_mu < self.zigzag_below

    def fractions(self) -> tuple[float, float]:
        """The fraction of the layers, and of the parameters, whose adjacent correlation in the zigzag windows is
        below the zigzag threshold (NaN without zigzag windows)."""
        if not self.zigzag_pairs.any():
            return float("nan"), float("nan")
        return float(self.below.mean()), float(self.sizes[self.below].sum() / self.sizes.sum())


def module_of(tensor_name: str) -> str:
    """The module a parameter tensor belongs to: its name without the last part (``layer1.0.conv1``)."""
    return tensor_name.rpartition(".")[0] or tensor_name


def zigzag_pair_ends(phase: np.ndarray, h: int) -> np.ndarray:
    """[K] bool: m such that (m - 1, m) lies in a window [k, k + h - 1] of a step k in the zigzag phase."""
    out = np.zeros(len(phase), dtype=bool)
    for k in np.flatnonzero(phase == ZIGZAG):
        out[k + 1: k + h] = True
    return out


def load_layers(trajectory: str, analysis: str) -> LayerData:
    """Read the per-tensor statistics of ``trajectory`` grouped by module, with the zigzag windows of ``analysis``."""
    traj, an = store.read_trajectory(trajectory), store.read_analysis(analysis)
    store.check_analysis_of(traj, trajectory, an, analysis)
    if "layer_dot" not in traj.steps:
        raise ZigzagError(f"{trajectory}: no /steps/layer_dot; train the run with per_layer: true (--per-layer)")
    tensor_names = [str(name) for name in traj.attrs["layer_names"]]
    tensor_sizes = np.asarray(traj.attrs["layer_sizes"], dtype=np.float64)
    modules = list(dict.fromkeys(module_of(name) for name in tensor_names))
    member = np.array([modules.index(module_of(name)) for name in tensor_names])
    group = np.zeros((len(modules), len(tensor_names)))
    group[member, np.arange(len(tensor_names))] = 1.0
    dot = np.einsum("mt,ktl->mkl", group, traj.steps["layer_dot"])  # [layers, K, L+1]
    flips = np.einsum("mt,ktl->mkl", group * tensor_sizes, traj.steps["layer_opposite"][:, :, :2])[:, :, 1]
    sizes = group @ tensor_sizes
    flips = flips / sizes[:, None]
    mu = np.full(dot.shape[:2], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu[:, 1:] = dot[:, 1:, 1] / np.sqrt(dot[:, 1:, 0] * dot[:, :-1, 0])
    pairs = zigzag_pair_ends(an.phase, an.h)
    with warnings.catch_warnings():  # a layer without a finite value there: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        zigzag_mu, zigzag_flips = (np.nanmean(values[:, pairs], axis=1) if pairs.any()
                                   else np.full(len(modules), np.nan) for values in (mu, flips))
    return LayerData(names=modules, sizes=sizes, adjacent_mu=mu, zigzag_pairs=pairs, zigzag_mu=zigzag_mu,
                     zigzag_flips=zigzag_flips, zigzag_below=an.zigzag_below)

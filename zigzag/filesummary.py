"""``zigzag inspect``: a readable summary of any zigzag HDF5 file."""

from __future__ import annotations

import json

import h5py
import numpy as np

from zigzag import store
from zigzag.errors import ZigzagError

MAIN_SERIES = ("loss", "accuracy", "lr", "grad_norm", "mean_mu", "phase")


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in np.asarray(values, dtype=float)) + "]"


def summary(path) -> str:
    """Format, settings, status, the arithmetic's fingerprint (trajectories), every dataset with shape and
    description, head and tail of main series.

    A trajectory or analysis is first read whole by its reader, so a damaged one (a failed checksum, values
    no run writes) is refused with the reader's one line rather than summarised."""
    try:
        with store.open_file(path) as f:
            fmt = store.attr_value(f.attrs["format"])
        if fmt == store.TRAJECTORY:
            store.read_trajectory(path)
        elif fmt == store.ANALYSIS:
            store.read_analysis(path)
        return _summary(path)
    except (OSError, KeyError, ValueError) as err:
        raise ZigzagError(f"{path}: damaged or truncated zigzag file ({err}); re-create it") from None


def _summary(path) -> str:
    lines = []
    with store.open_file(path) as f:
        lines.append(f"{path}: {f.attrs['format']} (format_version {f.attrs['format_version']})")
        for key in sorted(f.attrs):
            if key in ("format", "format_version", "config", "versions", store.ARITHMETIC):
                continue
            lines.append(f"  {key}: {store.attr_value(f.attrs[key])}")
        lines.append(f"  versions: {f.attrs['versions']}")
        if store.ARITHMETIC in f.attrs:
            lines.append(f"  {store.ARITHMETIC}:")
            lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(json.loads(f.attrs[store.ARITHMETIC]).items())]
        config = store.file_config(f)
        lines.append("  config:")
        lines += [f"    {k}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(config.items())]
        lines.append("  datasets:")
        series = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                lines.append(f"    /{name} {obj.shape} {obj.dtype}: {obj.attrs.get('description', '')}")
                if obj.ndim == 1 and name.split("/")[-1] in MAIN_SERIES:
                    series.append((name, obj))

        f.visititems(visit)
        for name, ds in series:
            n = ds.shape[0]
            head = _fmt(store.read_data(ds, slice(0, min(3, n))))
            tail = _fmt(store.read_data(ds, slice(max(0, n - 3), n))) if n > 3 else ""
            lines.append(f"  /{name}: first {head}" + (f" ... last {tail}" if tail else ""))
    return "\n".join(lines)

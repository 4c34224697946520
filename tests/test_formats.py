"""docs/formats.md is the files' contract: every dataset and attribute that the real code writes is in its
tables, with the documented dtype or type, and every name in its tables is written by the real code."""

import json
import re
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest

from zigzag import cli, store

DOC = Path(__file__).resolve().parent.parent / "docs" / "formats.md"
REQUIRED = ("always", "finished")  # every file the test makes has finished
TABLES = {"path": "datasets", "attribute": "attributes", "dataset attribute": "dataset attributes"}


def cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def documented() -> dict[tuple[str, str], dict[str, dict]]:
    """(section, table) -> name -> row (a dict keyed by the table's header), from the doc's tables."""
    out: dict = defaultdict(dict)
    section, header = None, None
    lines = DOC.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            section, header = line[3:].strip(), None
        elif line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = cells(line)
        elif line.startswith("|") and not line.startswith("|---") and header:
            row = dict(zip(header, cells(line)))
            name = re.fullmatch(r"`([^`]+)`", row[header[0]])
            assert name, f"docs/formats.md: first cell of {line!r} is not a `name`"
            out[section, TABLES[header[0]]][name.group(1)] = row
        elif not line.startswith("|"):
            header = None
    return out


def contents(path) -> tuple[dict, dict, dict]:
    """Datasets (/path -> h5py.Dataset info), root attributes and per-dataset attribute names of a file."""
    datasets, dataset_attrs = {}, {}
    with h5py.File(path, "r") as f:
        root = {key: store.attr_value(value) for key, value in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                datasets[f"/{name}"] = obj.dtype
                dataset_attrs[f"/{name}"] = set(obj.attrs)

        f.visititems(visit)
    return datasets, root, dataset_attrs


def type_matches(documented_type: str, value) -> bool:
    if documented_type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if documented_type == "float":
        return isinstance(value, float)
    if documented_type == "string":
        return isinstance(value, str)
    if documented_type == "JSON string":
        return isinstance(value, str) and json.loads(value) is not None
    if documented_type == "string [T]":
        return isinstance(value, np.ndarray) and value.ndim == 1 and all(isinstance(v, str) for v in value)
    if documented_type == "int64 [T]":
        return isinstance(value, np.ndarray) and value.dtype == np.int64 and value.ndim == 1
    if documented_type == "float64 [C]":
        return isinstance(value, np.ndarray) and value.dtype == np.float64 and value.ndim == 1
    raise AssertionError(f"docs/formats.md: unknown attribute type {documented_type!r}")


def dtype_matches(documented_dtype: str, dtype) -> bool:
    names = documented_dtype.split(" or ")
    return ("string" in names and h5py.check_string_dtype(dtype) is not None) or str(dtype) in names


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files of every kind made by the real code, together holding every optional name: a dataset; a run with
    sharpness, raw gradients, raw parameters and per-layer statistics and one that diverges; the analysis of each."""
    from conftest import write_synthetic_dataset

    tmp = tmp_path_factory.mktemp("formats")
    dataset = write_synthetic_dataset(tmp / "data.h5")
    common = ["--dataset", dataset, "--model", "cnn", "--width", "0.5", "--micro-batch", "48", "--lags", "3",
              "--device", "cpu", "--quiet"]
    runs = {"full": ["--lr", "0.1", "--steps", "6", "--sharpness", "every:3", "--raw-gradients", "every:2",
                     "--raw-compression", "gzip", "--raw-parameters", "every:3", "--per-layer"],
            "diverged": ["--lr", "1e12", "--steps", "30", "--no-batch-norm"]}
    made = {"zigzag-dataset": [dataset], "zigzag-trajectory": [], "zigzag-analysis": []}
    for name, flags in runs.items():
        trajectory, analysis = tmp / f"{name}.h5", tmp / f"{name}.analysis.h5"
        assert cli.main([*map(str, ["train", *common, *flags, "--out", trajectory])]) == 0  # in-process
        assert cli.main(["analyze", str(trajectory), "--out", str(analysis), "--h", "3"]) == 0
        made["zigzag-trajectory"].append(trajectory)
        made["zigzag-analysis"].append(analysis)
    assert store.read_trajectory(made["zigzag-trajectory"][1]).status == "diverged"
    return made


@pytest.mark.parametrize("kind", ["zigzag-dataset", "zigzag-trajectory", "zigzag-analysis"])
def test_every_name_in_the_files_is_documented_and_every_documented_name_is_written(files, kind):
    doc = documented()
    doc_datasets = doc[kind, "datasets"]
    doc_attrs = {**doc["Every file", "attributes"], **doc[kind, "attributes"]}
    doc_dataset_attrs = set(doc["Every file", "dataset attributes"])
    assert doc_datasets and doc[kind, "attributes"] and doc_dataset_attrs == {"description"}
    seen_datasets, seen_attrs = set(), set()
    for path in files[kind]:
        datasets, attrs, dataset_attrs = contents(path)
        assert attrs["format"] == kind
        assert set(datasets) <= set(doc_datasets), f"{path}: undocumented datasets {set(datasets) - set(doc_datasets)}"
        assert set(attrs) <= set(doc_attrs), f"{path}: undocumented attributes {set(attrs) - set(doc_attrs)}"
        for name, row in doc_datasets.items():
            if row["present"] in REQUIRED:
                assert name in datasets, f"{path}: documented as {row['present']} but missing: {name}"
            if name in datasets:
                assert dtype_matches(row["dtype"], datasets[name]), f"{name}: {datasets[name]} vs {row['dtype']}"
                assert dataset_attrs[name] == doc_dataset_attrs, name
        for name, row in doc_attrs.items():
            if row["present"] in REQUIRED:
                assert name in attrs, f"{path}: documented as {row['present']} but missing: @{name}"
            if name in attrs:
                assert type_matches(row["type"], attrs[name]), f"@{name}: {attrs[name]!r} is not {row['type']}"
        seen_datasets |= set(datasets)
        seen_attrs |= set(attrs)
    assert seen_datasets == set(doc_datasets), f"documented but never written: {set(doc_datasets) - seen_datasets}"
    assert seen_attrs == set(doc_attrs), f"documented but never written: {set(doc_attrs) - seen_attrs}"


def test_the_analysis_tables_are_the_store_field_table():
    """The zigzag-analysis tables name exactly the fields of ``store.ANALYSIS_FIELDS``, each with its dtype or type
    and its meaning, and the meaning says how a "none" is stored."""
    doc = documented()
    datasets, attributes = doc["zigzag-analysis", "datasets"], doc["zigzag-analysis", "attributes"]
    fields = store.ANALYSIS_FIELDS
    assert set(datasets) == {field.where for field in fields.values() if not field.is_attribute}
    assert set(attributes) == {name for name, field in fields.items() if field.is_attribute}
    for name, field in fields.items():
        row = attributes[name] if field.is_attribute else datasets[field.where]
        assert (row["type"] if field.is_attribute else row["dtype"]) == field.dtype, name
        assert row["meaning"] == field.meaning, name
        assert {"-1": "-1:", "NaN": "NaN", "empty": "empty", "-": ""}[field.none] in field.meaning, name


def test_every_dataset_of_every_kind_carries_the_checksum(files):
    """Fletcher-32 (a changed byte fails the read) wherever HDF5 allows a filter: all but variable-length
    strings (docs/formats.md, "Every file")."""
    for paths in files.values():
        for path in paths:
            with h5py.File(path, "r") as f:
                unchecked = []
                f.visititems(lambda name, obj: unchecked.append(name) if isinstance(obj, h5py.Dataset) and not
                             obj.fletcher32 and h5py.check_string_dtype(obj.dtype) is None else None)
            assert not unchecked, f"{path}: no checksum on {unchecked}"


def test_the_documented_version_is_the_one_written(files):
    text = DOC.read_text()
    assert f"- **{store.FORMAT_VERSION}** (current)" in text
    for kind, paths in files.items():
        for path in paths:
            assert contents(path)[1]["format_version"] == store.FORMAT_VERSION

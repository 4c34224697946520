"""benchmarks/bench_layout.py runs and prints one row per model with the channels_last / default ratio."""

import re

from conftest import benchmark_script


def test_the_layout_benchmark_prints_a_ratio_per_model(monkeypatch, capsys):
    bench = benchmark_script("bench_layout")
    monkeypatch.setattr("sys.argv", ["bench_layout.py", "--models", "cnn", "--repeats", "1", "--images", "50"])
    threads = bench.torch.get_num_threads()
    try:
        bench.main()
    finally:
        bench.torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cnn ")]
    assert len(rows) == 1
    default, last, ratio, hvp = (float(v) for v in re.findall(r"[\d.]+", rows[0]))
    assert abs(ratio - last / default) < 0.01  # printed values are rounded
    assert hvp > 0

"""Memory of the label-image path, measured with tracemalloc by benchmarks/prior_memory.py (which
prints the 512x512 / ~2,500-region numbers of docs/performance.md). Here a smaller image and a
generous bound: the whole path (generate + encode + cache write) must stay within 3x of the
segmentation call alone (the benchmark's target is 2x; the former one-array-per-region format
needed regions x H x W bytes for the masks alone, ~4x SLIC's peak at this size and 19x at 512x512)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "prior_memory.py"


def test_whole_path_peak_is_bounded_by_the_segmentation_peak():
    spec = importlib.util.spec_from_file_location("prior_memory", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.measure(size=256, segments=600, encodings=("boundary", "label", "onehot:8"))
    assert r["regions"] > 300
    h, w = r["shape"]
    for enc in ("boundary", "label", "onehot:8"):
        assert r[enc] <= 3 * r["segment"], (enc, r)
        assert r[enc] < r["regions"] * h * w / 3  # well below what one boolean array per region needed

"""numpy's finite check of the bench's 1 GiB float32 NPY: prints GB/s (median of runs)."""
import os
import statistics
import sys
import tempfile
import time

import numpy as np

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "guardrails_bench_1g.npy")
size = os.path.getsize(path)
runs = []
for _ in range(5):
    start = time.perf_counter()
    ok = bool(np.isfinite(np.load(path, mmap_mode="r")).all())
    runs.append(size / (time.perf_counter() - start) / 1e9)
    assert ok
print(f"numpy isfinite(mmap).all(): median {statistics.median(runs):.2f} GB/s (min {min(runs):.2f}, max {max(runs):.2f})")

"""The psutil equivalent of one guardrails resource snapshot, timed in a loop.

Per snapshot: process memory_info (rss) and cpu_percent, num_fds, system virtual_memory and
cpu_percent, and disk_usage of one path. Prints microseconds per snapshot (median of runs).
"""
import os
import statistics
import sys
import tempfile
import time

import psutil

path = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
proc = psutil.Process()


def snapshot():
    return (
        proc.memory_info().rss,
        proc.cpu_percent(None),
        proc.num_fds(),
        psutil.virtual_memory(),
        psutil.cpu_percent(None),
        psutil.disk_usage(path),
    )


for _ in range(1000):
    snapshot()
runs = []
for _ in range(7):
    n = 5000
    start = time.perf_counter()
    for _ in range(n):
        snapshot()
    runs.append((time.perf_counter() - start) / n * 1e6)
print(f"psutil_snapshot: median {statistics.median(runs):.2f} us (min {min(runs):.2f}, max {max(runs):.2f})")

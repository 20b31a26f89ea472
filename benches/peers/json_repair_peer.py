"""Python json_repair on the same 8 KB malformed answer the Rust bench repairs.
Prints MB/s (median of runs)."""
import os
import statistics
import time

from json_repair import repair_json

here = os.path.dirname(os.path.abspath(__file__))
text = open(os.path.join(here, "malformed_8k.txt")).read()
assert repair_json(text, return_objects=True)
runs = []
for _ in range(7):
    n = 50
    start = time.perf_counter()
    for _ in range(n):
        repair_json(text, return_objects=True)
    per = (time.perf_counter() - start) / n
    runs.append(len(text.encode()) / per / 1e6)
print(f"json_repair: median {statistics.median(runs):.2f} MB/s (min {min(runs):.2f}, max {max(runs):.2f})")

"""Writes the 1M-row metadata table for the Parquet bench and the files it names.

    python3 benches/peers/make_parquet_1m.py [DIR] [--unique]   (default /tmp/guardrails_bench)

DIR/meta_1m.parquet: id int64, path (10 000 distinct files under DIR/files, each named by
100 rows), label (dictionary string), score float64, split string; snappy, pyarrow's
default row groups. With --unique, DIR/meta_1m_unique.parquet instead, whose rows name
1 000 000 distinct (empty) files under DIR/ufiles: the worst case for the path check.
Idempotent: existing output is kept.
"""
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 1_000_000
FILES = 10_000


def main():
    args = [a for a in sys.argv[1:] if a != "--unique"]
    unique = "--unique" in sys.argv[1:]
    root = args[0] if args else "/tmp/guardrails_bench"
    table_path = os.path.join(root, "meta_1m_unique.parquet" if unique else "meta_1m.parquet")
    if os.path.exists(table_path):
        print(table_path)
        return
    files, folder, dirs = (ROWS, "ufiles", 1000) if unique else (FILES, "files", 100)
    for d in range(dirs):
        os.makedirs(os.path.join(root, folder, f"d{d}"), exist_ok=True)
    names = [f"{folder}/d{i % dirs}/f{i}.bin" for i in range(files)]
    for name in names:
        p = os.path.join(root, name)
        if not os.path.exists(p):
            open(p, "wb").close()
    labels = ["cat", "dog", "bird", "fish"]
    t = pa.table(
        {
            "id": pa.array(range(ROWS), pa.int64()),
            "path": pa.array([names[i % files] for i in range(ROWS)]),
            "label": pa.array([labels[i % 4] for i in range(ROWS)]).dictionary_encode(),
            "score": pa.array([(i % 1000) / 1000.0 for i in range(ROWS)], pa.float64()),
            "split": pa.array(["train" if i % 10 else "val" for i in range(ROWS)]),
        }
    )
    pq.write_table(t, table_path + ".tmp")
    os.replace(table_path + ".tmp", table_path)
    print(table_path)


if __name__ == "__main__":
    main()

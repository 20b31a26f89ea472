"""The pandas peer of the 1M-row Parquet metadata check: read_parquet, then the same checks
as `guardrails validate table --require id,path,label --min-rows 1000000 --not-null
id,path,label --paths-exist path`: columns present, row count, no nulls, every path exists
(relative to the table's folder). Exit 0 when the table passes, 1 when it fails.

    python3 benches/peers/parquet_pandas.py DIR/meta_1m.parquet
"""
import os
import sys

import pandas as pd


def main():
    path = sys.argv[1]
    root = os.path.dirname(path)
    df = pd.read_parquet(path)
    ok = {"id", "path", "label"} <= set(df.columns)
    ok = ok and len(df) >= 1_000_000
    ok = ok and not df[["id", "path", "label"]].isna().any().any()
    ok = ok and all(os.path.exists(os.path.join(root, p)) for p in df["path"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

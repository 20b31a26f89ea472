#!/usr/bin/env bash
# The 1M-row Parquet metadata check: guardrails' CLI against pandas read_parquet + the same
# checks, as whole processes (wall time and peak RSS from GNU time), on two tables: rows
# naming 10 000 files, and rows naming 1 000 000 distinct files. Then the criterion bench
# of the library call on the same tables.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install --quiet pyarrow pandas
DIR=${GUARDRAILS_PARQUET_BENCH:-/tmp/guardrails_bench}
python3 benches/peers/make_parquet_1m.py "$DIR" >/dev/null
python3 benches/peers/make_parquet_1m.py "$DIR" --unique >/dev/null
cargo build --release --features cli --quiet
for table in "$DIR/meta_1m.parquet" "$DIR/meta_1m_unique.parquet"; do
    echo "== $table"
    for run in 1 2 3; do
        /usr/bin/time -f "guardrails wall %e s, peak %M KiB" ./target/release/guardrails -q validate table \
            --require id,path,label --min-rows 1000000 --not-null id,path,label --paths-exist path "$table"
        /usr/bin/time -f "pandas     wall %e s, peak %M KiB" python3 benches/peers/parquet_pandas.py "$table"
    done
done
GUARDRAILS_PARQUET_BENCH="$DIR" cargo bench --bench integrity --features data -- parquet --warm-up-time 1 --measurement-time 5 2>&1 | grep -E "^parquet|time:"

"""Queries over the stored score tables that never hold them whole: DuckDB over the shards' parquet.

At the paper's scale the filter shards hold 45M ScoredCandidate rows (450 shards of 100K);
read into pandas that is 30+ GB. Here DuckDB scans only the columns a query names, streams
them and spills to disk past ``memory_limit``; the top-k per triple is a window query over the
candidates that pass. The rule is selection.py's, to the row: thresholds inclusive, failed or
NaN scores never pass, sim_direction descending with ties broken by candidate_id.

Files are named by path (``score_files``); a filesystem other than the local one is given as
an fsspec filesystem and registered with DuckDB, so the tables can live in object storage.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import pyarrow as pa

from datagen.store import RunStore

from .selection import THRESHOLD_METRIC, Thresholds
from .table import STAGE

SHARD_PATTERN = r"-(\d+)\.parquet$"   # filter-<shard>.parquet: the shard number of a row's file
MEMORY_LIMIT = "1GB"                  # DuckDB spills past this; the 2 GB budget keeps room for Python


def score_files(store: RunStore) -> list[str]:
    """The scores parquet of every done filter shard, in shard order."""
    names = [store.shard_name(STAGE, s, "parquet") for s in store.done_shards(STAGE)]
    return [store.url(name) for name in names if store.exists(name)]


def connect(files: Sequence[str], filesystem: Any = None, threads: int | None = None,
            memory_limit: str = MEMORY_LIMIT):
    """A DuckDB connection with the view ``scores``: every row of ``files`` plus its ``shard``."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")   # order comes from ORDER BY, never from the scan
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if filesystem is not None:
        con.register_filesystem(filesystem)
    if not files:
        from .table import SCORES_SCHEMA

        con.register("_empty", SCORES_SCHEMA.append(pa.field("shard", pa.int64())).empty_table())
        con.execute("CREATE VIEW scores AS SELECT * FROM _empty")
        return con
    listed = ", ".join(_quote(f) for f in files)
    con.execute(f"CREATE VIEW scores AS SELECT * EXCLUDE (filename), "
                f"CAST(regexp_extract(filename, '{SHARD_PATTERN}', 1) AS BIGINT) AS shard "
                f"FROM read_parquet([{listed}], filename = true)")
    return con


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _number(x: float) -> str:
    if math.isinf(x):
        return "'-inf'::DOUBLE" if x < 0 else "'inf'::DOUBLE"
    return repr(float(x))


def at_least(metric: str, value: float) -> str:
    """``metric >= value`` as numpy reads it: DuckDB orders NaN above every number, numpy never passes it."""
    return f"({metric} >= {_number(value)} AND NOT isnan({metric}))"


def passes_sql(t: Thresholds, skip: str | None = None) -> str:
    """selection.passes() as a SQL condition; ``skip`` leaves one threshold out."""
    conds = ["status = 'ok'"] + [at_least(metric, getattr(t, name)) for name, metric in THRESHOLD_METRIC.items()
                                 if name != skip]
    return " AND ".join(conds)


def selected_sql(t: Thresholds, max_pairs: int, columns: Sequence[str]) -> str:
    """The selected rows with their 1-based ``rank``: top ``max_pairs`` passers per triple."""
    cols = ", ".join(dict.fromkeys(["candidate_id", "triple_id", "sim_direction", *columns]))
    return (f"SELECT {cols}, row_number() OVER (PARTITION BY triple_id ORDER BY sim_direction DESC, "
            f"candidate_id ASC) AS rank FROM scores WHERE {passes_sql(t)} QUALIFY rank <= {int(max_pairs)}")


def selection_arrow(con, t: Thresholds, max_pairs: int, extra: Sequence[str] = ()) -> pa.Table:
    """selection.selection_table() of every stored row: ids, rank, metrics, ``extra``; by triple, then rank."""
    metrics = list(THRESHOLD_METRIC.values())
    out = ["candidate_id", "triple_id", "rank", *metrics, *extra]
    query = selected_sql(t, max_pairs, [*metrics, *extra])
    return con.sql(f"SELECT {', '.join(out)} FROM ({query}) ORDER BY triple_id, rank").to_arrow_table()


def counts(con, t: Thresholds) -> dict[str, int]:
    """Candidates, scored, passing and triples over every stored row."""
    row = con.execute(f"SELECT count(*), count(*) FILTER (WHERE status = 'ok'), "
                      f"count(*) FILTER (WHERE {passes_sql(t)}), count(DISTINCT triple_id) FROM scores").fetchall()[0]
    return dict(zip(("candidates", "scored", "passing", "triples"), (int(x or 0) for x in row)))

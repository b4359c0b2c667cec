"""Selection out of core (DuckDB over the shards) is today's pandas selection, row for row."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datagen.filter.score_query import connect, counts, score_files, selection_arrow
from datagen.filter.selection import Thresholds, passes, selection_table
from datagen.filter.table import SCORES_SCHEMA, read_scores
from datagen.records import ShardStats
from datagen.store import RunStore
from tests.filter.test_selection import random_table


def write_scores(root, df: pd.DataFrame, shards: int) -> RunStore:
    """``df`` as filter shards in the stage's schema, rows dealt round-robin (triples straddle shards)."""
    import pyarrow as pa

    store = RunStore(root)
    full = df.assign(index=0, seed=0, p=0.5, cfg_scale=7.5, mode="self", steps=20, model_id="m", input_caption="a",
                     instruction="b", output_caption="c", edit_kind="", image_format="png",
                     failure_reason="", images_kept=np.arange(len(df)) % 3 > 0)
    for s in range(shards):
        part = full.iloc[s::shards][SCORES_SCHEMA.names]
        store.write_table("filter", s, [], schema=SCORES_SCHEMA)
        table = pa.Table.from_pandas(part, schema=SCORES_SCHEMA, preserve_index=False)
        import pyarrow.parquet as pq

        pq.write_table(table, store.shard_path("filter", s, "parquet"))
        store.write_stats(ShardStats(stage="filter", shard=s, count_in=len(part)))
    return store


@pytest.mark.parametrize("seed", [0, 1])
def test_duckdb_selection_is_the_pandas_selection_row_for_row_with_ties_and_nan(tmp_path, seed):
    df = random_table(4000, 150, seed)                   # sim_direction rounded to 0.01: many ties
    df.loc[df.sample(40, random_state=seed).index, "sim_image"] = np.nan   # an ok row with a NaN never passes
    store = write_scores(tmp_path, df, shards=3)
    scores = read_scores(store)
    con = connect(score_files(store))
    for t, k in [(Thresholds(0.2, 0.2, 0.2, 0.75), 4), (Thresholds(0.1, 0.0, 0.0, 0.6), 1),
                 (Thresholds(-1, -1, -1, -1), 100), (Thresholds(0.1, 0.1, 0.25, 0.6), 2)]:
        want = selection_table(scores, t, k, extra=("shard", "images_kept"))
        got = selection_arrow(con, t, k, extra=("shard", "images_kept")).to_pandas()
        assert len(want) > 0
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
        c = counts(con, t)
        assert c == {"candidates": len(scores), "scored": int((scores["status"] == "ok").sum()),
                     "passing": int(passes(scores, t).sum()), "triples": scores["triple_id"].nunique()}

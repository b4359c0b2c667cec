"""The audit's all-row figures, computed out of core, equal the rule applied to the whole table in memory."""
from __future__ import annotations

import numpy as np
import pytest

from datagen.filter.audit_rows import OFF, RowFigures, _r, grid_axis, grid_quantiles, sweep_values
from datagen.filter.score_query import score_files
from datagen.filter.selection import THRESHOLD_METRIC, Selector, Thresholds, passes
from datagen.filter.table import read_scores
from tests.filter.test_score_query import write_scores
from tests.filter.test_selection import random_table


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    df = random_table(3000, 120, 5)                      # ties in sim_direction, 10 % failed (NaN)
    df.loc[df.sample(30, random_state=5).index, "sim_0"] = np.nan   # ok rows with a NaN score never pass
    store = write_scores(tmp_path_factory.mktemp("rows"), df, shards=4)   # triples straddle shards
    return store, read_scores(store)


@pytest.mark.parametrize("t,k", [(Thresholds(0.2, 0.2, 0.2, 0.75), 4), (Thresholds(0.1, 0.05, 0.0, 0.6), 2)])
def test_all_row_figures_equal_the_in_memory_rule(stored, t, k):
    store, df = stored
    rows = RowFigures(score_files(store), t, k)
    selector = Selector(df)
    ok = (df["status"] == "ok").to_numpy()
    scored = int(ok.sum())

    def kept(tt):
        return int(selector.select(tt, k).sum())

    chosen = selector.select(t, k)
    assert rows.summary() == {
        "candidates": len(df), "scored": scored, "failed": len(df) - scored,
        "images_kept": int(df["images_kept"].sum()), "passing": int(passes(df, t).sum()), "selected": int(chosen.sum()),
        "triples": df["triple_id"].nunique(), "triples_with_pairs": df.loc[chosen, "triple_id"].nunique(),
        "selected_without_images": int((chosen & ~df["images_kept"].to_numpy()).sum())}
    sweeps = rows.sweeps()
    for name, metric in THRESHOLD_METRIC.items():
        v = df[metric].to_numpy(float)
        finite = v[ok & np.isfinite(v)]
        assert rows.distributions[metric]["mean"] == _r(finite.mean())
        assert rows.distributions[metric]["median"] == _r(np.quantile(finite, 0.5))
        assert [r["value"] for r in sweeps[name]] == sweep_values(v[ok], getattr(t, name), 21)
        for r in sweeps[name]:
            tt = t.replace(**{name: r["value"]})
            assert r["pairs_kept"] == kept(tt)
            assert r["pass_rate"] == _r(passes(df, tt).sum() / scored)
            assert r["pass_rate_alone"] == _r((ok & (v >= r["value"])).sum() / scored)
        m = rows.marginal()[name]
        without = t.replace(**{name: OFF})
        assert m["pairs_kept_without"] == kept(without) and m["pairs_removed"] == kept(without) - int(chosen.sum())
        assert m["removed_only_by_this"] == int((passes(df, without) & ~passes(df, t)).sum())
    grid = rows.grid()
    for name, values in ((grid["rows"], grid["row_values"]), (grid["cols"], grid["col_values"])):
        v = df[THRESHOLD_METRIC[name]].to_numpy(float)
        v = v[ok & np.isfinite(v)]
        assert values == grid_axis(np.quantile(v, grid_quantiles(6)), getattr(t, name))
    for i, rv in enumerate(grid["row_values"]):
        for j, cv in enumerate(grid["col_values"]):
            tt = t.replace(min_direction=rv, min_image=cv)
            assert grid["pairs_kept"][i][j] == kept(tt)
            assert grid["pass_rate"][i][j] == _r(passes(df, tt).sum() / scored, 4)

"""Selection: thresholds (inclusive), failures never pass, top-k by sim_direction per triple."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datagen.config import ConfigError
from datagen.filter.selection import Selector, Thresholds, passes, select, selection_table
from datagen.filter.stage import check_keep_bound
from tests.filter.conftest import filter_config


def table(rows):
    cols = ["candidate_id", "triple_id", "sim_0", "sim_1", "sim_image", "sim_direction", "status"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def random_table(n: int, triples: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "candidate_id": [f"c{i:05d}" for i in range(n)],
        "triple_id": [f"t{j:03d}" for j in rng.integers(0, triples, n)],
        "sim_0": rng.uniform(0, 0.4, n), "sim_1": rng.uniform(0, 0.4, n), "sim_image": rng.uniform(0.5, 1, n),
        "sim_direction": np.round(rng.uniform(-0.2, 0.6, n), 2),   # rounded: many ties
        "status": np.where(rng.uniform(size=n) < 0.1, "failed", "ok"),
    })
    df.loc[df["status"] == "failed", ["sim_0", "sim_1", "sim_image", "sim_direction"]] = np.nan
    return df


def brute_force(df: pd.DataFrame, t: Thresholds, k: int) -> set[str]:
    """The rule spelled out: per triple, passers sorted by (-sim_direction, id), first k."""
    chosen = set()
    for _, g in df.groupby("triple_id"):
        ok = [r for r in g.itertuples() if r.status == "ok" and r.sim_0 >= t.min_sim_0 and r.sim_1 >= t.min_sim_1
              and r.sim_direction >= t.min_direction and r.sim_image >= t.min_image]
        ok.sort(key=lambda r: (-r.sim_direction, r.candidate_id))
        chosen |= {r.candidate_id for r in ok[:k]}
    return chosen


def test_thresholds_are_inclusive_and_failures_never_pass():
    t = Thresholds(0.2, 0.2, 0.2, 0.75)
    df = table([
        ("a", "t", 0.2, 0.2, 0.75, 0.2, "ok"),          # exactly on every threshold: passes
        ("b", "t", 0.19, 0.3, 0.9, 0.5, "ok"),          # sim_0 too low
        ("c", "t", 0.3, 0.3, 0.74, 0.5, "ok"),          # sim_image too low
        ("d", "t", 0.3, 0.3, 0.9, np.nan, "ok"),        # NaN never passes
        ("e", "t", 0.3, 0.3, 0.9, 0.5, "failed"),       # failed never passes
    ])
    assert passes(df, t).tolist() == [True, False, False, False, False]


def test_top_k_by_direction_per_triple_with_ties_broken_by_id():
    df = table([(f"x{i}", "t1", 0.3, 0.3, 0.9, d, "ok") for i, d in enumerate([0.3, 0.5, 0.5, 0.4, 0.25])]
               + [("y0", "t2", 0.3, 0.3, 0.9, 0.9, "ok")])
    out = selection_table(df, Thresholds(0.2, 0.2, 0.2, 0.75), max_pairs=3)
    assert out["candidate_id"].tolist() == ["x1", "x2", "x3", "y0"]
    assert out["rank"].tolist() == [1, 2, 3, 1]


@pytest.mark.parametrize("seed", [0, 1])
def test_selector_matches_the_rule_spelled_out_and_ignores_row_order(seed):
    df = random_table(3000, 200, seed)
    for t, k in [(Thresholds(0.2, 0.2, 0.2, 0.75), 4), (Thresholds(0.1, 0.0, 0.0, 0.6), 1),
                 (Thresholds(-1, -1, -1, -1), 100)]:
        want = brute_force(df, t, k)
        got = set(df.loc[select(df, t, k), "candidate_id"])
        assert got == want and len(want) > 0
        shuffled = df.sample(frac=1, random_state=seed).reset_index(drop=True)
        assert set(shuffled.loc[select(shuffled, t, k), "candidate_id"]) == want


def test_ranks_are_one_based_positions_among_passers():
    df = random_table(500, 20, 3)
    t = Thresholds(0.1, 0.1, 0.0, 0.6)
    ranks = Selector(df).ranks(t, 4)
    sel = df.assign(rank=ranks)[ranks > 0]
    for _, g in sel.groupby("triple_id"):
        assert sorted(g["rank"]) == list(range(1, len(g) + 1))
        assert g.sort_values("rank")["sim_direction"].is_monotonic_decreasing


def test_keep_bound_stricter_than_thresholds_is_rejected(tiny_clip_dir):
    check_keep_bound(filter_config(tiny_clip_dir))  # the shipped defaults are consistent
    with pytest.raises(ConfigError, match="keep_min_image"):
        check_keep_bound(filter_config(tiny_clip_dir, keep_min_image=0.95))

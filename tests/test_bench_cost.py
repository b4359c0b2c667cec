"""bench/cost.py's block cache: a block is reused only for the same triples and render settings."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from datagen.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_cost", REPO / "bench" / "cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blocks_are_cached_per_triple_set_and_settings(tmp_path):
    bench = _bench()
    cfg = load_config("shapes", ["render.num_candidates=4"])
    folder = lambda triples, c=cfg: bench.recipe_blocks("paper", c, triples, tmp_path, block=8)[0]   # noqa: E731
    seed0, seed1 = bench.make_triples(16, 0, "bench"), bench.make_triples(16, 1, "bench")
    assert folder(seed0) != folder(seed1)                          # other triples: other blocks
    assert folder(bench.make_triples(8, 0, "bench")) == folder(seed0)   # a prefix of the same set: shared
    assert seed0[:8] == bench.make_triples(8, 0, "bench")
    assert folder(seed0, load_config("shapes", ["render.num_candidates=5"])) != folder(seed0)
    counted = load_config("shapes", ["render.num_candidates=4", "render.steps_reference=100"])
    assert folder(seed0, counted) == folder(seed0)                 # a count, not a setting
    _, todo = bench.recipe_blocks("paper", cfg, seed0, tmp_path, block=8)
    assert len(todo) == 2                                          # nothing rendered yet: both blocks to do
    fast = load_config("shapes-fast", ["render.waves.rescue_after=null"])
    # Off, a rescue_near changes nothing: the key is the one blocks had before the rescue existed.
    assert folder(seed0, fast) == folder(seed0, load_config("shapes-fast", ["render.waves.rescue_after=null",
                                                                             "render.waves.rescue_near=0.02"]))
    assert folder(seed0, fast) != folder(seed0, load_config("shapes-fast"))


def test_the_calibration_does_not_depend_on_ours_budget_or_waves(tmp_path):
    bench = _bench()
    triples = bench.make_triples(8, 0, "calibration")
    folder = lambda ours_set, n=32: bench.recipe_blocks(   # noqa: E731
        "calibration", bench.calibration_config("shapes-fast", ours_set, n), triples, tmp_path, block=8)[0]
    cfg = bench.calibration_config("shapes-fast", ["render.num_candidates=44", "render.waves.far=0.1"], 32)
    assert cfg.render.num_candidates == 32 and cfg.render.waves is None and cfg.render.preview.rule == ""
    assert folder(["render.num_candidates=44", "render.waves.far=0.1"]) == folder([])
    assert folder([], 24) != folder([])                      # a sample size of its own: other blocks
    assert folder(["render.steps=15"]) != folder([])         # what the previews see: other blocks


def test_coverage_is_broken_down_by_edit_kind():
    bench = _bench()
    triples = bench.make_triples(12, 0, "bench")
    kinds = sorted({t.edit_kind for t in triples})
    first_of = {k: next(t for t in triples if t.edit_kind == k) for k in kinds}
    chosen = bench.pd.DataFrame({"triple_id": [first_of[kinds[0]].triple_id]})
    share = bench.coverage_by_kind(chosen, triples)
    assert set(share) == set(kinds)
    assert share[kinds[0]] == round(1 / sum(t.edit_kind == kinds[0] for t in triples), 4)
    assert all(share[k] == 0.0 for k in kinds[1:])


def test_sets_of_triples_pool_by_their_counts_and_are_judged_against_the_targets():
    bench = _bench()

    def recipe(rows, kept, precision, coverage, started):
        return {"unet_rows": rows, "kept_pairs": kept, "rows_per_kept_pair": rows / kept, "precision": precision,
                "coverage": coverage, "candidates_started": started}

    def one(seed, paper, ours):
        return {"seed": seed, "triples": 200, "paper": paper, "ours": ours, **bench.judged(paper, ours)}

    a = one(0, recipe(600_000, 300, 0.70, 0.45, 3200), recipe(100_000, 300, 0.75, 0.44, 2000))
    b = one(1, recipe(600_000, 100, 0.80, 0.15, 3200), recipe(150_000, 100, 0.70, 0.10, 2000))
    assert a["targets_met"] == {"rows_per_kept_pair_ratio": True, "precision_difference": True, "coverage_ratio": True}
    assert b["targets_met"] == {"rows_per_kept_pair_ratio": False, "precision_difference": False, "coverage_ratio": False}
    both = bench.pooled([a, b])
    # Summed counts, not averaged ratios: 1.2M/400 against 250k/400 rows, 290/400 correct pairs against 295/400.
    assert both["rows_per_kept_pair_ratio"] == 4.8
    assert both["precision_paper"] == 0.725 and both["precision_ours"] == 0.7375
    assert both["coverage_ours"] == 0.27 and both["coverage_ratio"] == 0.9
    assert both["per_seed"]["1"]["targets_met"]["coverage_ratio"] is False
    assert 0 < both["precision_difference_se"] < a["precision_difference_se"]   # more pairs, a smaller error


def test_per_triple_tables_share_the_measured_rows_and_count_what_each_triple_kept():
    bench = _bench()
    triples = bench.make_triples(3, 0, "bench")
    a, b, c = (t.triple_id for t in triples)
    t = bench.Thresholds(min_sim_0=0.5, min_sim_1=0.5, min_direction=0.5, min_image=0.5)
    good = dict(sim_0=0.9, sim_1=0.9, sim_image=0.9, sim_direction=0.9)
    nan = dict.fromkeys(good, float("nan"))
    rows = bench.pd.DataFrame([
        {"candidate_id": f"{a}_0000", "triple_id": a, "index": 0, "status": "ok", **good, "correct_full": True},
        {"candidate_id": f"{a}_0001", "triple_id": a, "index": 1, "status": "ok", **good, "correct_full": False},
        {"candidate_id": f"{b}_0000", "triple_id": b, "index": 0, "status": "stopped", **nan, "correct_full": None},
        {"candidate_id": f"{b}_0001", "triple_id": b, "index": 1, "status": "ok", **{**good, "sim_direction": 0.1},
         "correct_full": True}])
    table = bench.per_triple(rows, triples, t, 4, unet_rows=350, stopped_fraction=0.5)
    assert list(table.index) == [a, b, c]                        # every triple, one that started nothing too
    assert table["rows"].tolist() == [200.0, 150.0, 0.0]         # 350 rows over weights 1, 1, 0.5, 1
    assert table["kept"].tolist() == [2.0, 0.0, 0.0] and table["correct"].tolist() == [1.0, 0.0, 0.0]
    assert table["covered"].tolist() == [1.0, 0.0, 0.0]


def test_the_bootstrap_resamples_both_recipes_on_the_same_triples():
    bench = _bench()
    ids = [f"t{i}" for i in range(40)]
    kept = bench.np.array([i % 3 for i in range(40)], dtype=float)
    paper = bench.pd.DataFrame({"rows": 3200.0, "kept": kept, "correct": kept // 2, "covered": (kept > 0) * 1.0},
                               index=ids)
    # The same pairs for a sixth of the rows on every triple: whatever the draw, exactly 6x, equal precision
    # and coverage, so all three targets hold in every draw.
    same = bench.bootstrap([(paper, paper.assign(rows=paper["rows"] / 6))], draws=200)
    assert same["ci95"] == {"rows_per_kept_pair_ratio": [6.0, 6.0], "precision_difference": [0.0, 0.0],
                            "coverage_ratio": [1.0, 1.0]}
    assert same["all_targets_met_share"] == 1.0
    # Ours losing every other covered triple: coverage near 0.5 in every draw, so no draw meets the targets.
    lost = paper.copy()
    lost.loc[ids[1::2], ["kept", "correct", "covered"]] = 0.0
    worse = bench.bootstrap([(paper, lost.assign(rows=lost["rows"] / 6))], draws=200)
    low, high = worse["ci95"]["coverage_ratio"]
    assert 0.3 < low < 0.5 < high < 0.7 and worse["all_targets_met_share"] == 0.0
    # Two sets pool: the interval of twice the triples is narrower.
    pooled = bench.bootstrap([(paper, lost), (paper, lost)], draws=200)
    assert pooled["ci95"]["coverage_ratio"][1] - pooled["ci95"]["coverage_ratio"][0] < high - low

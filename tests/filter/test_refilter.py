"""refilter: a new selection from stored scores alone, composable, honest about missing images."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from datagen.config import ConfigError
from datagen.filter.refilter import refilter
from datagen.filter.selection import Thresholds, select
from datagen.filter.table import RunError, read_scores, read_selection
from editsynth_cli import main


def test_refilter_equals_selection_with_the_new_thresholds_without_images_or_gpu(run_copy):
    store, cfg = run_copy
    shutil.rmtree(store.stage_dir("render"))            # refilter must not need the candidates...
    for shard in store.done_shards("filter"):
        store.shard_path("filter", shard, "tar").unlink()   # ...nor any stored image
    info = refilter(store.root, ["filter.min_image=0.95", "filter.max_pairs_per_triple=2"])
    scores = read_scores(store)
    t = Thresholds.from_config(cfg.filter).replace(min_image=0.95)
    want = set(scores.loc[select(scores, t, 2), "candidate_id"])
    got = read_selection(store)
    assert set(got["candidate_id"]) == want
    assert info["selected"] == len(want) and info["previous_selected"] > info["selected"]
    assert got.groupby("triple_id").size().max() <= 2
    saved = json.loads((store.stage_dir("filter") / "selection.json").read_text())
    assert saved["thresholds"]["min_image"] == 0.95 and saved["max_pairs_per_triple"] == 2


def test_successive_refilters_compose_and_reset_returns_to_the_config(run_copy):
    store, cfg = run_copy
    refilter(store.root, ["filter.min_image=0.95"])
    info = refilter(store.root, ["filter.min_direction=0.0"])
    assert info["thresholds"]["min_image"] == 0.95 and info["thresholds"]["min_direction"] == 0.0
    assert info["overrides"] == ["filter.min_image=0.95", "filter.min_direction=0.0"]
    info = refilter(store.root, [], reset=True)
    assert info["thresholds"] == Thresholds.from_config(cfg.filter).as_dict()


def test_thresholds_looser_than_the_keep_bound_count_pairs_without_images_and_export_skips_them(run_copy):
    store, _ = run_copy
    info = refilter(store.root, ["filter.min_image=-1", "filter.min_direction=-1", "filter.min_sim_0=-1",
                                 "filter.min_sim_1=-1", "filter.max_pairs_per_triple=100"], export=True)
    sel = read_selection(store)
    missing = int((~sel["images_kept"]).sum())
    assert missing > 0 and info["selected_without_images"] == missing
    assert info["export"]["skipped"] == {"no_stored_images": missing}
    assert info["export"]["pairs"] == len(sel) - missing


def test_refilter_refuses_settings_fixed_at_scoring_time(run_copy):
    store, _ = run_copy
    with pytest.raises(ConfigError, match="keep bound"):
        refilter(store.root, ["filter.keep_min_image=0.9"])
    with pytest.raises(ConfigError, match="min_image"):
        refilter(store.root, ["filter.min_image=7"])     # out of range: pydantic names the key


def test_refilter_on_a_folder_without_scores_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="no done shards"):
        refilter(tmp_path)


def test_cli_refilter_reports_and_rewrites_selection(run_copy, capsys):
    store, _ = run_copy
    assert main(["refilter", "--run", str(store.root), "--set", "filter.min_direction=0.1"]) == 0
    out = capsys.readouterr().out
    assert "selected" in out and "min_direction': 0.1" in out
    assert (pd.read_parquet(store.stage_dir("filter") / "selection.parquet")["sim_direction"] >= 0.1).all()
    assert main(["refilter", "--run", str(store.root / "nope")]) == 2
    assert "no done shards" in capsys.readouterr().err

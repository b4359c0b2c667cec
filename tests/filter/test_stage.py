"""The filter stage on the run store: what it writes, and how bad input is counted, not fatal."""
from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest

from datagen.clip.loading import ClipLoadError
from datagen.filter import stage
from datagen.filter.selection import Thresholds
from datagen.filter.table import read_oracle, read_scores
from datagen.records import Candidate, ScoredCandidate
from datagen.store import RunStore
from tests.filter.conftest import filter_config, make_candidates, write_render_shard


def test_every_candidate_gets_a_row_with_its_ids_and_render_settings(scored_run, shapes_items):
    store, cfg = scored_run
    df = read_scores(store)
    items = [c for s in shapes_items.values() for c, _, _ in s]
    assert sorted(df["candidate_id"]) == sorted(c.candidate_id for c in items)
    row = df.set_index("candidate_id").loc[items[1].candidate_id]
    for field in ("triple_id", "seed", "p", "cfg_scale", "mode", "steps", "model_id", "instruction", "edit_kind"):
        assert row[field] == getattr(items[1], field)
    assert set(df.columns) - {"shard"} == set(ScoredCandidate.__dataclass_fields__)


def test_images_are_kept_exactly_inside_the_keep_bound(scored_run):
    store, cfg = scored_run
    df = read_scores(store)
    keep = Thresholds.keep_bound(cfg.filter)
    inside = ((df["sim_0"] >= keep.min_sim_0) & (df["sim_1"] >= keep.min_sim_1)
              & (df["sim_direction"] >= keep.min_direction) & (df["sim_image"] >= keep.min_image))
    assert (df["images_kept"] == inside).all()
    assert 0 < inside.sum() < len(df)   # the fixture's bound keeps some and drops some
    for shard in store.done_shards("filter"):
        kept = store.read_tar("filter", shard)
        assert set(kept) == set(df[(df["shard"] == shard) & df["images_kept"]]["candidate_id"])
        assert all(set(s) == {"input.png", "edited.png"} for s in kept.values())


def test_shapes_oracle_judges_every_scored_candidate(scored_run):
    store, _ = scored_run
    judged = read_oracle(store)
    df = read_scores(store)
    assert set(judged["candidate_id"]) == set(df["candidate_id"])
    kinds = df.set_index("candidate_id")["index"].mod(3).map({0: "correct", 1: "unchanged", 2: "wrong"})
    correct = judged.set_index("candidate_id")["correct"]
    assert correct[kinds[kinds == "correct"].index].all()          # rendered right: oracle agrees
    assert not correct[kinds[kinds != "correct"].index].any()


def test_bad_images_are_counted_per_reason_and_the_rest_scored(tmp_path, tiny_clip_dir):
    store = RunStore(tmp_path)
    items = make_candidates(5, triples=2, per_triple=4)
    ids = [c.candidate_id for c, _, _ in items]
    failed = Candidate(**{**items[3][0].to_row(), "status": "failed", "failure_reason": "nan_latents: step 7"})
    items[3] = (failed, items[3][1], items[3][2])
    write_render_shard(store, 0, items, drop_images={ids[0]: ("edited",)}, corrupt={ids[1]})
    cfg = filter_config(tiny_clip_dir)
    stats = stage.Worker(cfg, str(tmp_path)).process_shard(0)
    assert stats.rejections == {"missing_image": 1, "unreadable_image": 1, "render_failed": 1}
    assert stats.count_in == 8 and stats.count_out == 5
    df = read_scores(store).set_index("candidate_id")
    assert df.loc[ids[0], "failure_reason"] == "missing_image: no edited image in the render tar"
    assert df.loc[ids[1], "failure_reason"].startswith("unreadable_image:")
    assert df.loc[ids[3], "failure_reason"] == "render_failed: nan_latents: step 7"
    assert df.loc[ids[4:], "status"].eq("ok").all() and df.loc[ids[4:], "sim_0"].notna().all()
    assert df.loc[ids[:2], "sim_0"].isna().all()


def test_unreadable_shards_are_counted_and_other_shards_unaffected(tmp_path, tiny_clip_dir):
    store = RunStore(tmp_path)
    for s in (0, 1, 2):
        write_render_shard(store, s, make_candidates(s, triples=1, per_triple=3))
    store.shard_path("render", 1, "tar").write_bytes(b"\x00garbage" * 100)        # tar unreadable
    store.shard_path("render", 2, "parquet").write_bytes(b"not parquet at all")   # table unreadable
    worker = stage.Worker(filter_config(tiny_clip_dir), str(tmp_path))
    good, bad_tar, bad_table = (worker.process_shard(s) for s in (0, 1, 2))
    assert good.rejections == {} and good.count_out == 3
    assert bad_tar.rejections == {"unreadable_shard": 3} and "render-00001.tar" in bad_tar.extra["shard_error"]
    assert bad_table.rejections == {"unreadable_shard": 3} and "render-00002.parquet" in bad_table.extra["shard_error"]
    assert store.done_shards("filter") == [0, 1, 2]
    summary = store.write_summary("filter")
    assert summary["rejections"] == {"unreadable_shard": 6} and summary["count_out"] == 3


@pytest.mark.parametrize("cut", [0, 300])   # at a 512-byte header boundary (tarfile is silent), mid-file
def test_a_truncated_tar_keeps_what_was_readable_and_chunking_changes_nothing(tmp_path, tiny_clip_dir, cut):
    store = RunStore(tmp_path)
    items = make_candidates(3, triples=2, per_triple=5)
    write_render_shard(store, 0, items)
    write_render_shard(store, 1, items)
    tar = store.shard_path("render", 1, "tar")
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2 + cut])
    cfg = filter_config(tiny_clip_dir, **{"resources.batch_size": 4})   # 4-candidate chunks: one CLIP batch each
    worker = stage.Worker(cfg, str(tmp_path))
    assert worker.chunk == 4
    full, cut = worker.process_shard(0), worker.process_shard(1)
    assert full.count_out == 10
    assert 0 < cut.count_out < 10 and cut.rejections == {"unreadable_shard": 10 - cut.count_out}
    assert "render-00001.tar" in cut.extra["shard_error"]
    df = read_scores(store)
    a, b = (df[df["shard"] == s].set_index("candidate_id") for s in (0, 1))
    salvaged = b[b["status"] == "ok"].index
    pd.testing.assert_frame_equal(a.loc[salvaged].drop(columns="shard"), b.loc[salvaged].drop(columns="shard"))
    big = stage.Worker(filter_config(tiny_clip_dir), str(tmp_path / "big"))
    RunStore(tmp_path / "big").write_table("render", 0, [c.to_row() for c, _, _ in items])
    write_render_shard(RunStore(tmp_path / "big"), 0, items)
    big.process_shard(0)
    c = read_scores(RunStore(tmp_path / "big")).set_index("candidate_id")
    assert (c["sim_direction"] - a["sim_direction"]).abs().max() < 1e-5   # one chunk or three: same scores


def test_a_filter_shard_older_than_its_render_shard_is_redone(tmp_path, tiny_clip_dir):
    store = RunStore(tmp_path)
    cfg = filter_config(tiny_clip_dir)
    write_render_shard(store, 0, make_candidates(0, triples=1, per_triple=2))
    stage.Worker(cfg, str(tmp_path)).process_shard(0)
    assert stage.plan_shards(cfg, store) == [0] and store.is_done("filter", 0)
    later = time.time() + 5
    os.utime(store.stats_path("render", 0), (later, later))   # the render shard was redone
    stage.plan_shards(cfg, store)
    assert not store.is_done("filter", 0)


def test_a_clip_that_fails_to_load_stops_the_stage_before_any_work(tmp_path, tiny_clip_dir):
    store = RunStore(tmp_path)
    write_render_shard(store, 0, make_candidates(0, triples=1, per_triple=2))
    before = {p.name: p.read_bytes() for p in store.stage_dir("render").iterdir()}
    with pytest.raises(ClipLoadError, match="does not exist"):
        stage.plan_shards(filter_config(tmp_path / "no-such-clip"), store)
    bad = tmp_path / "corrupt-clip"
    bad.mkdir()
    (bad / "open_clip_config.json").write_text((tiny_clip_dir / "open_clip_config.json").read_text())
    (bad / "open_clip_model.safetensors").write_bytes(b"junk")
    with pytest.raises(ClipLoadError, match="could not load CLIP"):
        stage.Worker(filter_config(bad), str(tmp_path))
    assert {p.name: p.read_bytes() for p in store.stage_dir("render").iterdir()} == before
    assert not store.stage_dir("filter").exists()


def test_filter_stage_runs_on_ray_and_finalizes(tmp_path, tiny_clip_dir, ray_local, shapes_items, splitting):
    """The real protocol: datagen.run.run_stage over a Ray actor pool, then finalize."""
    from datagen.run import run_stage

    store = RunStore(tmp_path)
    for s, items in shapes_items.items():
        write_render_shard(store, s, items)
    cfg = filter_config(tiny_clip_dir, **splitting)
    summary = run_stage("filter", cfg, tmp_path)
    assert summary["shards"] == 2 and summary["count_out"] == 36
    final = summary["finalize"]
    sel = pd.read_parquet(tmp_path / "filter" / "selection.parquet")
    assert final["selection"]["selected"] == len(sel) > 0
    assert final["export"]["pairs"] == len(sel)
    assert json.loads((tmp_path / "export" / "manifest.json").read_text())["pairs"] == len(sel)
    assert (tmp_path / "report" / "oracle.json").exists()
    again = run_stage("filter", cfg, tmp_path)   # resume: nothing left to do
    assert again["count_out"] == 36

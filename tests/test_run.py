"""The stage runner (datagen/run.py): resume skips done shards, --overwrite starts a stage over."""
from __future__ import annotations

import os

from datagen.config import load_config
from datagen.run import run_pipeline
from datagen.store import RunStore


def test_overwrite_redoes_every_shard_of_the_named_stage_and_resume_redoes_none(tmp_path, ray_local):
    cfg = load_config("shapes", ["captions.num_triples=12", "captions.shard_size=4"])
    run_pipeline(cfg, tmp_path, ["captions"])
    store = RunStore(tmp_path)
    first = store.read_stage("captions")
    for shard in store.done_shards("captions"):        # date the markers back, to see which get rewritten
        os.utime(store.stats_path("captions", shard), (1, 1))
    (store.stage_dir("captions") / "stray.tmp").write_text("left by a killed run")

    resumed = run_pipeline(cfg, tmp_path, ["captions"])["captions"]
    assert resumed["shards"] == 3
    assert all(store.stats_path("captions", s).stat().st_mtime == 1 for s in store.done_shards("captions"))

    summary = run_pipeline(cfg, tmp_path, ["captions"], overwrite=True)["captions"]
    assert summary["shards"] == 3
    assert all(store.stats_path("captions", s).stat().st_mtime > 1 for s in store.done_shards("captions"))
    assert not (store.stage_dir("captions") / "stray.tmp").exists()    # the stage folder was started over
    assert store.read_stage("captions") == first                       # and made the same triples


def test_a_local_run_starts_its_own_ray_and_joins_no_other_cluster():
    # Regression: ray.init() with no address joins the cluster this machine started last (RAY_ADDRESS,
    # /tmp/ray/ray_current_cluster), and hung on one that had died. A local run starts its own.
    import subprocess
    import sys

    script = ("from datagen.distribute import init_ray; import ray; init_ray(None); "
              "print(len(ray.nodes())); ray.shutdown()")
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}   # nothing listens there
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "1"


def _shapes(store: str, *extra: str):
    return load_config("shapes", ["captions.num_triples=6", "captions.shard_size=3", "render.num_candidates=4",
                                  "render.steps=6", "export.formats=[]", f"render.store={store}", *extra])


def test_render_store_kept_scores_inline_writes_images_once_and_matches_store_all(tmp_path, ray_local):
    # The keep bound is raised so that some candidates fall outside it and must not be stored.
    strict = ("filter.keep_min_image=0.8", "filter.min_image=0.8")
    kept, full = RunStore(tmp_path / "kept"), RunStore(tmp_path / "all")
    run_pipeline(_shapes("kept", *strict), kept.root, ["captions", "render", "filter"])
    run_pipeline(_shapes("all", *strict), full.root, ["captions", "render", "filter"])

    assert kept.done_shards("render") == kept.done_shards("filter") == [0, 1]
    for shard in (0, 1):
        assert not kept.shard_path("render", shard, "tar").exists()          # no image outside the filter shard
        assert full.shard_path("render", shard, "tar").exists()
        for part in ("tar", "parquet", "oracle.parquet"):                    # same scores, same kept images
            assert kept.shard_path("filter", shard, part).read_bytes() == full.shard_path("filter", shard, part).read_bytes()
        scores = kept.read_table("filter", shard)
        stored = kept.read_tar("filter", shard)
        assert set(stored) == {r["candidate_id"] for r in scores if r["images_kept"]}
        assert 0 < len(stored) < len(scores)
        render_stats, filter_stats = kept.read_stats("render")[shard], kept.read_stats("filter")[shard]
        assert render_stats.extra["scored_inline"] and filter_stats.extra["scored_inline"]
        assert render_stats.extra["bytes_written"] == kept.shard_path("render", shard, "parquet").stat().st_size
        assert filter_stats.extra["bytes_written"] == sum(kept.shard_path("filter", shard, p).stat().st_size
                                                          for p in ("tar", "parquet", "oracle.parquet"))
        assert full.read_stats("render")[shard].extra["bytes_written"] > render_stats.extra["bytes_written"]
    assert (kept.root / "filter" / "selection.parquet").read_bytes() == (full.root / "filter" / "selection.parquet").read_bytes()


def test_scores_made_while_rendering_are_never_deleted_for_want_of_a_render_tar(tmp_path, ray_local):
    import pytest

    from datagen.config import ConfigError

    cfg = _shapes("kept", "captions.num_triples=3")
    store = RunStore(tmp_path)
    run_pipeline(cfg, tmp_path, ["captions", "render", "filter"])
    with pytest.raises(ConfigError, match="render.store=kept"):
        run_pipeline(cfg, tmp_path, ["filter"], overwrite=True)
    assert store.done_shards("filter") == [0]                  # refused before anything was removed
    store.stats_path("filter", 0).unlink()                       # a filter shard lost some other way
    with pytest.raises(ConfigError, match="--stages render,filter --overwrite"):
        run_pipeline(cfg, tmp_path, ["filter"])
    run_pipeline(cfg, tmp_path, ["render", "filter"], overwrite=True)   # the way out it names
    assert store.done_shards("filter") == [0] and store.done_shards("render") == [0]

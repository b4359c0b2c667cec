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

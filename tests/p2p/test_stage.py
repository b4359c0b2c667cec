"""Stage 2 on the run store: shard files, render-one reproducibility, failure marking, resume."""
from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from datagen.p2p.stage import STAGE, Worker, plan_shards
from datagen.records import CandidateSpec

from .conftest import make_run, make_triple

REPO = Path(__file__).resolve().parents[2]
LONG = "a red circle on the left " + "and a small green square beside a large blue triangle " * 4
TRIPLES = [make_triple("a red circle on the left", "a red hexagon on the left"),
           make_triple(LONG, LONG.replace("red", "blue"))]


@pytest.fixture(scope="module")
def rendered_run(tmp_path_factory, tiny_sd_dir):
    """One run with one captions shard of 2 triples x 4 candidates, rendered in 2 chunks of 4."""
    import torch

    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("run")
    cfg, store = make_run(out, tiny_sd_dir, [TRIPLES], resources={"batch_size": 4, "num_cpus": 1})
    worker = Worker(cfg, str(out))                          # sets torch to resources.num_cpus threads
    stats = worker.process_shard(0)
    yield cfg, store, stats, worker
    torch.set_num_threads(threads)


def test_render_shard_writes_tar_parquet_and_stats(rendered_run):
    cfg, store, stats, _ = rendered_run
    assert plan_shards(cfg, store) == [0]
    rows = store.read_table(STAGE, 0)
    samples = store.read_tar(STAGE, 0)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert set(samples) == {r["candidate_id"] for r in rows}
    for row in rows:
        sample = samples[row["candidate_id"]]
        assert set(sample) == {"input.png", "edited.png", "json"}
        assert json.loads(sample["json"]) == row
        assert Image.open(io.BytesIO(sample["edited.png"])).size == (32, 32)
        assert row["steps"] == cfg.render.steps and row["model_id"] == cfg.render.model
    assert stats.count_in == 2 and stats.count_out == 8 and stats.rejections == {}
    assert stats.extra["truncated_captions"] == 2          # the long triple's two captions
    assert stats.extra["unet_rows"] < stats.extra["unet_rows_unshared"]
    assert stats.extra["seconds_unet"] > 0
    assert stats.extra["bytes_written"] == sum(store.shard_path(STAGE, 0, part).stat().st_size
                                               for part in ("tar", "parquet"))
    assert store.is_done(STAGE, 0)


def test_a_shard_is_written_chunk_by_chunk_not_held_whole(tmp_path, tiny_sd_dir, rendered_run):
    # Memory per actor is bounded by a chunk: when the second chunk is rendered, the first one's
    # images are already in the (temporary) tar, not in a list waiting for the end of the shard.
    _, _, _, worker = rendered_run
    shared = worker.cfg, worker.store
    cfg, store = make_run(tmp_path, tiny_sd_dir, [TRIPLES], resources={"batch_size": 4, "num_cpus": 1})
    worker.cfg, worker.store = cfg, store
    on_disk = []
    real = worker.renderer.render_chunk

    def recording(*args, **kwargs):
        on_disk.append(sum(p.stat().st_size for p in store.stage_dir(STAGE).glob(".render-00000.tar.*.tmp")))
        return real(*args, **kwargs)

    worker.renderer.render_chunk = recording
    try:
        worker.process_shard(0)
    finally:
        del worker.renderer.render_chunk
        worker.cfg, worker.store = shared
    assert len(on_disk) == 2 and on_disk[0] == 0 and on_disk[1] > 4 * 2 * 100   # 4 candidates' 2 images
    assert len(store.read_tar(STAGE, 0)) == 8


def test_render_one_reproduces_the_shard_bytes(rendered_run, tmp_path):
    from editsynth_cli import main

    _, store, _, _ = rendered_run
    cid = f"{TRIPLES[1].triple_id}_0001"                     # second chunk of the shard
    prefix = tmp_path / "again"
    assert main(["render-one", "--run", str(store.root), "--candidate", cid, "--out", str(prefix)]) == 0
    stored = store.read_tar(STAGE, 0)[cid]
    assert Path(f"{prefix}.input.png").read_bytes() == stored["input.png"]
    assert Path(f"{prefix}.edited.png").read_bytes() == stored["edited.png"]
    assert json.loads(Path(f"{prefix}.json").read_text()) == json.loads(stored["json"])


def test_render_one_refuses_unknown_candidates(rendered_run):
    from datagen.p2p.stage import render_one

    _, store, _, worker = rendered_run
    with pytest.raises(ValueError, match="not a candidate id"):
        render_one(store.root, "nounderscore", worker.renderer)
    with pytest.raises(ValueError, match="no done captions shard"):
        render_one(store.root, "0123456789abcdef_0000", worker.renderer)
    with pytest.raises(ValueError, match="num_candidates"):
        render_one(store.root, f"{TRIPLES[0].triple_id}_0099", worker.renderer)


def test_nan_latents_mark_only_that_candidate_failed(rendered_run):
    _, _, _, worker = rendered_run
    t = TRIPLES[0]
    specs = [CandidateSpec(f"{t.triple_id}_{i:04d}", t.triple_id, i, 100 + i, 0.5, cfg, "self")
             for i, cfg in enumerate((2.0, math.nan, 1.5))]
    rendered = worker.renderer.render_chunk({t.triple_id: t}, specs)
    assert [r.candidate.status for r in rendered] == ["ok", "failed", "ok"]
    assert rendered[1].candidate.failure_reason.startswith("non-finite latents in the source branch at step 0")
    assert rendered[1].images == {} and set(rendered[0].images) == {"input.png", "edited.png"}


def test_a_shard_whose_candidates_all_fail_is_still_written(tmp_path, tiny_sd_dir):
    cfg, store = make_run(tmp_path, tiny_sd_dir, [TRIPLES[:1], []], cfg_min=math.inf, cfg_max=math.inf,
                          num_candidates=2, steps=2)
    worker = Worker(cfg, str(tmp_path))
    stats = worker.process_shard(0)
    assert stats.count_out == 0 and stats.rejections == {"non-finite latents in the source branch": 2}
    assert [r["status"] for r in store.read_table(STAGE, 0)] == ["failed", "failed"]
    assert store.read_tar(STAGE, 0) == {}
    empty = worker.process_shard(1)                          # a captions shard with no triples
    assert empty.count_in == 0 and store.read_table(STAGE, 1) == []


def test_triples_the_text_encoder_cannot_tell_apart_are_not_rendered_but_counted(tmp_path, tiny_sd_dir):
    from datagen.p2p.stage import render_one

    past = LONG * 2  # well past the 77-token window
    guarded = {"identical_captions": make_triple("a red circle on the left", "A red  circle on the left"),
               "empty_caption": make_triple("a red circle on the left", " "),
               "difference_past_window": make_triple(past + "and a red star", past + "and a blue star")}
    cfg, store = make_run(tmp_path, tiny_sd_dir, [[TRIPLES[0], *guarded.values()]], num_candidates=2, steps=2,
                          resources={"batch_size": 8, "num_cpus": 1})
    stats = Worker(cfg, str(tmp_path)).process_shard(0)
    rows = store.read_table(STAGE, 0)
    by_triple = {r["triple_id"]: r for r in rows}
    assert len(rows) == 8 and by_triple[TRIPLES[0].triple_id]["status"] == "ok"
    for reason, triple in guarded.items():
        row = by_triple[triple.triple_id]
        assert (row["status"], row["failure_reason"]) == ("failed", reason)
    assert set(store.read_tar(STAGE, 0)) == {r["candidate_id"] for r in rows if r["triple_id"] == TRIPLES[0].triple_id}
    assert stats.count_out == 2 and stats.rejections == {reason: 2 for reason in guarded}
    assert stats.extra["triples_not_rendered"] == {reason: 1 for reason in guarded}
    # render-one drops the same specs from the chunk, so it still reproduces the shard's bytes
    ok = next(r["candidate_id"] for r in rows if r["status"] == "ok")
    stored = store.read_tar(STAGE, 0)[ok]
    assert render_one(tmp_path, ok)[1].images == {k: v for k, v in stored.items() if k != "json"}
    skipped = by_triple[guarded["identical_captions"].triple_id]["candidate_id"]
    assert render_one(tmp_path, skipped)[1].candidate.failure_reason == "identical_captions"


def test_jpeg_output_is_quality_100_jpeg(rendered_run, tiny_sd_dir):
    from datagen.p2p.render import CandidateRenderer

    from .conftest import render_config

    _, _, _, worker = rendered_run
    t = TRIPLES[0]
    renderer = CandidateRenderer(worker.renderer.loaded, render_config(tiny_sd_dir, image_format="jpg", steps=2))
    spec = CandidateSpec(f"{t.triple_id}_0000", t.triple_id, 0, 5, 0.5, 2.0, "self")
    [r] = renderer.render_chunk({t.triple_id: t}, [spec])
    assert set(r.images) == {"input.jpg", "edited.jpg"} and r.candidate.image_format == "jpg"
    assert r.images["edited.jpg"][:2] == b"\xff\xd8"


# A render run as one Ray actor runs it: load once, render the shards not done yet, in order.
RENDER_RUN = """
import sys
from datagen.config import PipelineConfig
from datagen.p2p.stage import STAGE, Worker, plan_shards
from datagen.store import RunStore
cfg = PipelineConfig.model_validate_json(open(sys.argv[1]).read())
store, worker = RunStore(sys.argv[2]), Worker(cfg, sys.argv[2])
for shard in plan_shards(cfg, store):
    if not store.is_done(STAGE, shard):
        worker.process_shard(shard)
"""


def shard_files(store, shard):
    files = store.stage_dir(STAGE).glob(f"render-{shard:05d}.*")
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def test_resume_after_sigkill_skips_done_shards(tmp_path, tiny_sd_dir, ray_local):
    from datagen.run import run_stage

    shards = [[make_triple(f"a red circle number {i}", f"a blue circle number {i}")] for i in range(3)]
    (tmp_path / "run").mkdir()
    cfg, store = make_run(tmp_path / "run", tiny_sd_dir, shards, num_candidates=2, steps=4)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "render-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", RENDER_RUN, str(store.root / "config.json"), str(store.root)],
                                cwd=REPO, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600      # a guard against a hang, not a speed check: a loaded machine is slow
        while not store.is_done(STAGE, 0):
            assert proc.poll() is None, f"the render run ended before its first shard was done:\n{log.read_text()}"
            assert time.time() < deadline, "no render shard done in time"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done = store.done_shards(STAGE)
    assert done[0] == 0 and len(done) < 3, done               # killed mid-run
    first = shard_files(store, 0)

    cfg.ray_address = ray_local.get_runtime_context().gcs_address
    run_stage("render", cfg, store.root)                    # the real resume: Ray actor pool, done shards skipped

    assert store.done_shards(STAGE) == [0, 1, 2]
    assert first == shard_files(store, 0)                   # the done shard was not redone
    assert not list(store.stage_dir(STAGE).glob(".*.tmp"))
    for shard in range(3):
        assert len(store.read_tar(STAGE, shard)) == 2
        assert [r["status"] for r in store.read_table(STAGE, shard)] == ["ok"] * 2

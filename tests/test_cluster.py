"""The shapes pipeline on a real three-node Ray cluster on loopback, one shared run folder, a worker
node killed (its raylet, by pid) while Stage 2 renders: re-run until done, it makes exactly what a
single-node run makes, with no candidate lost or duplicated. And a render actor killed mid-shard:
Ray restarts it and retries its shard (max_restarts / max_task_retries), within the same run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datagen.p2p.stage import image_stage
from datagen.store import RunStore
from tests.captions import processes
from tests.ray_cluster import ray_cluster, raylet_pid

REPO = Path(__file__).resolve().parents[1]
SETS = ["captions.num_triples=12", "captions.shard_size=2", "render.num_candidates=2", "render.steps=4",
        "render.resources.actors=2", "render.resources.num_cpus=1", "render.resources.batch_size=2",
        "filter.resources.actors=2", "filter.resources.num_cpus=1", "captions.resources.actors=2"]


def _args(out: Path, *extra: str) -> list[str]:
    return ([sys.executable, str(REPO / "run_generation.py"), "--pipeline", "shapes", "--out", str(out), *extra]
            + [a for s in SETS for a in ("--set", s)])


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")


def candidates(run: Path) -> tuple[list[str], dict[str, bytes]]:
    """Every candidate id of a run's render shards (with repeats, if any), and each stored one's images."""
    store = RunStore(run)
    ids, images = [], {}
    for shard in store.done_shards("render"):
        ids += pq.read_table(store.shard_path("render", shard, "parquet"), columns=["candidate_id"]).column(0).to_pylist()
        stage = image_stage(store, shard)
        for key, sample in store.read_tar(stage, shard).items():
            images[key] = sample["input.png"] + sample["edited.png"]
    return ids, images


def export_keys(run: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for tar in sorted((run / "export").rglob("*.tar")):
        import tarfile

        with tarfile.open(tar) as t:
            keys.setdefault(tar.parent.name, []).extend(sorted({m.name.split(".", 1)[0] for m in t.getmembers()}))
    return keys


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    reference = subprocess.run(_args(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]
    return out


def _map_workers(pid: int) -> list[int]:
    """Ray Data actor processes (one stage worker each) under ``pid``."""
    found = []
    for child in processes.descendants(pid):
        try:
            if b"MapWorker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def test_a_render_actor_killed_mid_shard_is_restarted_and_its_shard_retried_in_the_same_run(tmp_path, single_run):
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = processes.start(_args(out), log, cwd=REPO, env=_env())
    try:
        store = RunStore(out)
        processes.wait_for(lambda: len(store.done_shards("render")) >= 1 and _map_workers(proc.pid), 600,
                           "a done render shard", proc, log)
        victim = _map_workers(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        code = proc.wait(timeout=900)
    finally:
        processes.stop(proc)
    assert code == 0, log.read_text(errors="replace")[-3000:]      # no re-run needed
    ids, images = candidates(out)
    ref_ids, ref_images = candidates(single_run)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(ref_ids)
    assert images == ref_images


def test_a_node_killed_mid_render_loses_and_duplicates_nothing(tmp_path, single_run):

    out, log = tmp_path / "cluster", tmp_path / "cluster.log"
    with ray_cluster({"head": {"num_cpus": 1}, "node_b": {"num_cpus": 1}, "node_c": {"num_cpus": 1}},
                     _env()) as (address, env, nodes):
        proc = processes.start(_args(out, "--ray-address", address), log, cwd=REPO, env=env)
        try:
            store = RunStore(out)
            processes.wait_for(lambda: len(store.done_shards("render")) >= 1, 600, "a done render shard", proc, log)
            os.kill(raylet_pid(nodes["node_c"]), signal.SIGKILL)
            attempts = [proc.wait(timeout=900)]
        finally:
            processes.stop(proc)
        while attempts[-1] != 0 and len(attempts) < 4:   # the operator's answer to a lost node: run again
            rerun = processes.start(_args(out, "--ray-address", address), log.with_suffix(f".{len(attempts)}"),
                                    cwd=REPO, env=env)
            try:
                attempts.append(rerun.wait(timeout=900))
            finally:
                processes.stop(rerun)
    assert attempts[-1] == 0, (attempts, log.read_text(errors="replace")[-3000:])

    ids, images = candidates(out)
    ref_ids, ref_images = candidates(single_run)
    assert len(ids) == len(set(ids)) == len(ref_ids) == 12 * 2        # none duplicated, none lost
    assert sorted(ids) == sorted(ref_ids)
    assert images == ref_images                                       # byte for byte
    assert pq.read_table(out / "filter" / "selection.parquet").to_pylist() == \
        pq.read_table(single_run / "filter" / "selection.parquet").to_pylist()
    assert export_keys(out) == export_keys(single_run)
    # The work really spread. Over every stage: with render.store=kept the filter units are written by
    # the render actors, and one of two render actors can finish all six units while the other reloads.
    ran_on = {s.extra["node_id"] for stage in ("captions", "render", "filter") for s in RunStore(out).read_stats(stage)}
    assert len(ran_on) >= 2, ran_on
    print(json.dumps({"attempts": attempts, "nodes_used": len(ran_on)}))

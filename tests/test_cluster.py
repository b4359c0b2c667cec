"""The shapes pipeline on a real three-node Ray cluster on loopback, one shared run folder, a worker
node killed (its raylet, by pid) while Stage 2 renders: re-run until done, it makes exactly what a
single-node run makes, with no candidate lost or duplicated."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

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
        stage = "render" if store.shard_path("render", shard, "tar").exists() else "filter"   # render.store=kept
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


def test_a_node_killed_mid_render_loses_and_duplicates_nothing(tmp_path):
    reference = subprocess.run(_args(tmp_path / "single"), cwd=REPO, env=_env(), capture_output=True, text=True,
                               timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]

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
    ref_ids, ref_images = candidates(tmp_path / "single")
    assert len(ids) == len(set(ids)) == len(ref_ids) == 12 * 2        # none duplicated, none lost
    assert sorted(ids) == sorted(ref_ids)
    assert images == ref_images                                       # byte for byte
    assert pq.read_table(out / "filter" / "selection.parquet").to_pylist() == \
        pq.read_table(tmp_path / "single" / "filter" / "selection.parquet").to_pylist()
    assert export_keys(out) == export_keys(tmp_path / "single")
    ran_on = {s.extra["node_id"] for stage in ("render", "filter") for s in RunStore(out).read_stats(stage)}
    assert len(ran_on) >= 2, ran_on                                    # the work really spread
    print(json.dumps({"attempts": attempts, "nodes_used": len(ran_on)}))

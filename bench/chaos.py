"""Chaos: the shapes pipeline on a three-node Ray cluster on this machine, with a worker node (its
raylet, by pid) or one stage actor killed at a random point of a random stage; the same command is
re-run until it finishes, and the run is compared with a single-node run of the same config.

    python bench/chaos.py --trials 20

Per trial: candidate ids lost (in the single-node run, not in this one) and duplicated (written
twice), image bytes that differ, and whether the selection and the export match. The cluster is
Ray's own ``ray.cluster_utils.Cluster`` (real raylets and GCS, one machine). Last line: JSON with
``trials``, ``lost``, ``duplicated`` and the same per stage killed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402

from datagen.p2p.stage import image_stage  # noqa: E402
from datagen.store import RunStore  # noqa: E402

SETS = ["captions.num_triples=12", "captions.shard_size=2", "render.num_candidates=2", "render.steps=4",
        "render.resources.actors=2", "render.resources.num_cpus=1", "render.resources.batch_size=2",
        "filter.resources.actors=2", "filter.resources.num_cpus=1", "captions.resources.actors=2"]
STAGES = ("captions", "render", "filter")


def generate(out: Path, address: str | None, log: Path) -> subprocess.Popen:
    args = [sys.executable, str(REPO / "run_generation.py"), "--pipeline", "shapes", "--out", str(out),
            *(["--ray-address", address] if address else []), *[a for s in SETS for a in ("--set", s)]]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    with open(log, "ab") as f:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def made(run: Path) -> dict:
    """Every candidate id written (repeats kept), each ok one's image bytes, the selection, the export."""
    store = RunStore(run)
    ids, images = [], {}
    for shard in store.done_shards("render"):
        ids += pq.read_table(store.shard_path("render", shard, "parquet"), columns=["candidate_id"]).column(0).to_pylist()
        stage = image_stage(store, shard)
        images.update({k: b"".join(v[e] for e in sorted(v)) for k, v in store.read_tar(stage, shard).items()})
    selection = run / "filter" / "selection.parquet"
    export = sorted(str(p.relative_to(run)) + ":" + str(p.stat().st_size) for p in (run / "export").rglob("*.tar"))
    return {"ids": ids, "images": images,
            "selection": pq.read_table(selection).to_pylist() if selection.exists() else None, "export": export}


def stage_actor_pids(raylets: set[int]) -> list[int]:
    """Processes of Ray Data's actor pools (one stage worker each) started by this cluster's raylets:
    never another Ray's on the same machine."""
    parent, pids = {}, []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    for pid in parent:
        try:
            if "MapWorker" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                continue
        except OSError:
            continue
        ancestor = pid
        while ancestor in parent and ancestor not in raylets:
            ancestor = parent[ancestor]
        if ancestor in raylets:
            pids.append(pid)
    return pids


def trial(rng: random.Random, reference: dict, work: Path, index: int) -> dict:
    from ray.cluster_utils import Cluster

    stage, target = rng.choice(STAGES), rng.choice(("node", "actor"))
    after = rng.randrange(0, 4)          # kill once this many of the stage's units are done
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    out, log = work / f"trial-{index}", work / f"trial-{index}.log"
    try:
        proc = generate(out, cluster.address, log)
        store = RunStore(out)
        killed = ""
        while proc.poll() is None and not killed:
            if len(store.done_shards(stage)) >= after:
                if target == "node":
                    pid = workers[0].all_processes["raylet"][0].process.pid
                    os.kill(pid, signal.SIGKILL)
                    killed = f"raylet {pid}"
                elif pids := stage_actor_pids({n.all_processes["raylet"][0].process.pid
                                               for n in [cluster.head_node, *workers]}):
                    pid = rng.choice(pids)
                    os.kill(pid, signal.SIGKILL)
                    killed = f"actor {pid}"
            time.sleep(0.2)
        attempts = [proc.wait()]
        while attempts[-1] != 0 and len(attempts) < 5:
            attempts.append(generate(out, cluster.address, log).wait())
    finally:
        cluster.shutdown()
    got = made(out)
    lost = len(set(reference["ids"]) - set(got["ids"]))
    duplicated = len(got["ids"]) - len(set(got["ids"]))
    differ = sum(got["images"].get(k) != v for k, v in reference["images"].items())
    return {"stage": stage, "target": target, "after_units": after, "killed": killed or "(finished first)",
            "attempts": attempts, "lost": lost, "duplicated": duplicated, "images_differ": differ,
            "selection_same": got["selection"] == reference["selection"], "export_same": got["export"] == reference["export"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # A terminated bench still shuts its cluster down (the trial's finally): a dead cluster left
    # registered on the machine would stall every later `ray.init()` that looks for one.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="es-chaos-") as d:
        work = Path(d)
        single = generate(work / "single", None, work / "single.log")
        if single.wait() != 0:
            sys.exit("the single-node reference run failed:\n" + (work / "single.log").read_text()[-3000:])
        reference = made(work / "single")
        results = []
        for i in range(args.trials):
            results.append(trial(rng, reference, work, i))
            print(json.dumps(results[-1]), flush=True)
    per_stage = {s: {k: sum(r[k] for r in results if r["stage"] == s) for k in ("lost", "duplicated")}
                 | {"trials": sum(r["stage"] == s for r in results)} for s in STAGES}
    print(json.dumps({"trials": len(results), "lost": sum(r["lost"] for r in results),
                      "duplicated": sum(r["duplicated"] for r in results),
                      "images_differ": sum(r["images_differ"] for r in results),
                      "all_selections_same": all(r["selection_same"] for r in results),
                      "all_exports_same": all(r["export_same"] for r in results), "per_stage": per_stage}))


if __name__ == "__main__":
    main()

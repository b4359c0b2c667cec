"""Stage 1 on Ray: a local run, a SIGKILLed run resumed, and a real two-node cluster on loopback."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from datagen.captions import stage
from datagen.config import load_config
from datagen.run import run_pipeline
from datagen.store import RunStore
from tests.ray_cluster import ray_cluster

from . import processes
from .conftest import KEY_ENV, SECRET, openai_config, openai_overrides, write_captions
from .fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]


def _plain_rows(cfg, out: Path) -> list[dict]:
    """The reference: every shard processed in this process, without Ray."""
    store = RunStore(out)
    worker = stage.Worker(cfg, str(out))
    for shard in stage.plan_shards(cfg, store):
        worker.process_shard(shard)
    return store.read_stage("captions")


def _by_id(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["triple_id"])


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    env.update(extra)
    return env


def test_local_ray_run_of_the_shapes_pipeline_matches_the_plain_run(tmp_path, ray_local):
    cfg = load_config("shapes", ["captions.num_triples=90", "captions.shard_size=30"])
    summary = run_pipeline(cfg, tmp_path / "ray", ["captions"])["captions"]
    expected = _plain_rows(cfg, tmp_path / "plain")
    rows = RunStore(tmp_path / "ray").read_stage("captions")
    assert _by_id(rows) == _by_id(expected) and len(rows) > 0
    assert (summary["shards"], summary["count_in"], summary["count_out"]) == (3, 90, len(rows))
    assert summary["finalize"]["triples"] == len(rows)
    assert all(s.extra["node_id"] for s in RunStore(tmp_path / "ray").read_stats("captions"))


def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path, api_key):
    captions = [f"a photo of {n} red apples on a wooden table" for n in range(32)]
    caption_file = write_captions(tmp_path / "captions.txt", captions)
    out, log = tmp_path / "run", tmp_path / "run.log"
    store = RunStore(out)
    with FakeOpenAI(delay_s=0.25) as server:
        sets = openai_overrides(server.base_url, caption_file, "chat", "captions.shard_size=4",
                                "captions.openai.concurrency=1", "captions.openai.timeout_s=30")
        args = [sys.executable, "run_generation.py", "--pipeline", "smoke", "--stages", "captions",
                "--out", str(out)] + [a for s in sets for a in ("--set", s)]
        proc = processes.start(args, log, cwd=REPO, env=_env())
        try:
            processes.wait_for(lambda: len(store.done_shards("captions")) >= 2, 600, "2 done shards", proc, log)
        finally:
            processes.stop(proc, signal.SIGKILL)  # kill -9 the run and its local Ray
        done_before = store.done_shards("captions")
        assert 2 <= len(done_before) < 8, done_before
        stats_before = {s: store.stats_path("captions", s).read_bytes() for s in done_before}

        server.delay_s = 0
        rerun_log = tmp_path / "rerun.log"
        rerun = processes.start(args, rerun_log, cwd=REPO, env=_env())
        assert rerun.wait(timeout=180) == 0, rerun_log.read_text()[-3000:]
        requests = [c for _, c, _ in server.log]  # both runs

    assert store.done_shards("captions") == list(range(8))
    for s, data in stats_before.items():  # done shards were skipped, not redone
        assert store.stats_path("captions", s).read_bytes() == data
    done_captions = {captions[i] for s in done_before for i in range(4 * s, 4 * s + 4)}
    assert all(requests.count(c) == 1 for c in done_captions)  # not asked again by the re-run
    rows = store.read_stage("captions")
    ids = [r["triple_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 32
    with FakeOpenAI() as server:
        expected = _plain_rows(openai_config(server.base_url, caption_file, "chat", "captions.shard_size=4"),
                               tmp_path / "plain")
    assert _by_id(rows) == _by_id(expected)
    assert json.loads((out / "captions" / "summary.json").read_text())["count_out"] == 32


def test_on_ray_a_systematic_4xx_mid_run_stops_the_cli_with_that_error(tmp_path):
    """Past the probe, every caption gets the same 400: exit non-zero naming it, nothing marked done."""
    captions = [f"a photo of {n} red apples on a table" for n in range(6)]
    caption_file = write_captions(tmp_path / "c.txt", captions)
    out, log = tmp_path / "run", tmp_path / "run.log"
    with FakeOpenAI({c: ["400"] * 9 for c in captions}) as server:
        sets = openai_overrides(server.base_url, caption_file, "chat", "captions.shard_size=3")
        args = [sys.executable, "run_generation.py", "--pipeline", "smoke", "--stages", "captions",
                "--out", str(out)] + [a for s in sets for a in ("--set", s)]
        proc = processes.start(args, log, cwd=REPO, env=_env(**{KEY_ENV: SECRET}))
        try:
            rc = proc.wait(timeout=240)
        finally:
            processes.stop(proc)
    text = log.read_text(errors="replace")
    assert rc == 1, text[-3000:]
    assert "error: captions shard" in text and "got the same answer, HTTP 400: scripted 400" in text
    assert RunStore(out).done_shards("captions") == []


NODE_IDS_SCRIPT = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print(json.dumps({r: n["NodeID"] for n in ray.nodes() if n["Alive"] for r in n["Resources"] if r.startswith("node_")}))
"""


def _node_ids_by_resource(address: str, env: dict) -> dict[str, str]:
    """{"node_a": id, "node_b": id} as the cluster itself reports them."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", NODE_IDS_SCRIPT, address], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_node_cluster():
    """A head node (resource node_a) and a second node (node_b) joining it on 127.0.0.1."""
    with ray_cluster({"node_a": {"num_cpus": 1}, "node_b": {"num_cpus": 1}}, _env(**{KEY_ENV: SECRET})) as (address, env, _):
        yield address, env, _node_ids_by_resource(address, env)


def test_ray_address_spreads_shards_over_both_nodes_and_matches_the_local_run(tmp_path, api_key, two_node_cluster):
    address, env, node_ids_by_resource = two_node_cluster
    assert set(node_ids_by_resource) == {"node_a", "node_b"}
    caption_file = write_captions(tmp_path / "captions.txt", [f"a watercolour of {n} boats" for n in range(16)])
    out, log = tmp_path / "cluster", tmp_path / "cluster.log"
    # rendezvous=2: the first two requests after the probe wait for each other, so two actors must be
    # working at once
    with FakeOpenAI(rendezvous=2, rendezvous_skip=1, delay_s=0.05) as server:
        sets = openai_overrides(server.base_url, caption_file, "chat", "captions.shard_size=2",
                                "captions.openai.concurrency=1", "captions.openai.timeout_s=90",
                                "captions.resources.actors=2", "captions.resources.num_cpus=1")
        args = [sys.executable, "run_generation.py", "--pipeline", "smoke", "--stages", "captions", "--out", str(out),
                "--ray-address", address] + [a for s in sets for a in ("--set", s)]
        proc = processes.start(args, log, cwd=REPO, env=env)
        try:
            assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
        finally:
            processes.stop(proc)
        assert server.rendezvous_met is True

    stats = RunStore(out).read_stats("captions")
    assert len(stats) == 8
    assert {s.extra["node_id"] for s in stats} == set(node_ids_by_resource.values())  # both nodes did work
    with FakeOpenAI() as server:
        expected = _plain_rows(openai_config(server.base_url, caption_file, "chat", "captions.shard_size=2"),
                               tmp_path / "plain")
    assert _by_id(RunStore(out).read_stage("captions")) == _by_id(expected)

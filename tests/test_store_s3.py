"""Run locations on an object store: the run store, the shapes pipeline and the run commands on a
real S3-protocol server (moto's server mode) on loopback, through s3fs and pyarrow, the clients
a user's run goes through. Credentials and the endpoint come from the usual AWS_* variables,
which the CLI runs (and the Ray workers they start) inherit."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from datagen.records import ShardStats
from datagen.store import LocationError, RunStore
from editsynth_cli import main
from tests.captions import processes

REPO = Path(__file__).resolve().parents[1]
BUCKET = "editsynth-test"
SETS = ["captions.num_triples=8", "captions.shard_size=4", "render.num_candidates=2", "render.steps=4",
        "render.resources.actors=1", "render.resources.batch_size=4", "filter.resources.batch_size=8"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, the AWS_* environment pointing at it, one bucket."""
    port = processes.free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = processes.start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        processes.wait_for(lambda: _listening(port), 60, "the moto server", proc, log)
        os.environ.update(env)
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        processes.stop(proc)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _stats(stage: str, shard: int) -> ShardStats:
    return ShardStats(stage=stage, shard=shard, count_in=2, count_out=1, seconds=0.5)


def test_a_shard_on_s3_is_done_only_once_its_marker_is_written_after_its_data(s3, monkeypatch):
    store = RunStore(f"s3://{BUCKET}/store")
    put: list[str] = []
    original = store.fs.put_file
    monkeypatch.setattr(store.fs, "put_file", lambda lpath, rpath, **kw: (put.append(rpath.rsplit("/", 1)[-1]),
                                                                       original(lpath, rpath, **kw))[1])
    rows = [{"candidate_id": "a_0000", "sim_direction": 0.25}, {"candidate_id": "a_0001", "sim_direction": -0.5}]
    store.write_table("render", 0, rows)
    with store.tar_writer("render", 0) as add:
        add({"__key__": "a_0000", "input.png": b"\x89PNG in", "edited.png": b"\x89PNG out"})
    assert not store.is_done("render", 0) and store.done_shards("render") == []
    store.write_stats(_stats("render", 0))

    assert put == ["render-00000.parquet", "render-00000.tar", "render-00000.stats.json"]
    assert store.is_done("render", 0) and store.done_shards("render") == [0]
    assert store.read_table("render", 0) == rows
    assert store.read_tar("render", 0) == {"a_0000": {"input.png": b"\x89PNG in", "edited.png": b"\x89PNG out"}}
    assert [s.count_out for s in store.read_stats("render")] == [1]
    assert store.modified(store.stats_name("render", 0)) >= store.modified(store.shard_name("render", 0, "tar"))


def test_many_stats_on_s3_are_read_in_one_batched_call_and_listed_with_their_times(s3, monkeypatch):
    """A paper-scale stage has 112,500 stats files: status and the filter's plan read them in one
    concurrent call and take their times from one listing, not one request per file."""
    store = RunStore(f"s3://{BUCKET}/many")
    for shard in range(30):
        store.write_stats(ShardStats(stage="render", shard=shard, count_in=shard, count_out=1, seconds=0.5))
    calls: list[int] = []
    original = store.fs.cat
    monkeypatch.setattr(store.fs, "cat", lambda paths, **kw: (calls.append(len(paths)), original(paths, **kw))[1])
    assert [s.count_in for s in store.read_stats("render")] == list(range(30))
    assert calls == [30]
    times = store.modified_all("render/render-*.stats.json")
    assert times == {store.stats_name("render", s): store.modified(store.stats_name("render", s)) for s in range(30)}


def test_a_write_that_fails_on_s3_leaves_no_object_and_no_marker(s3):
    store = RunStore(f"s3://{BUCKET}/killed")
    with pytest.raises(RuntimeError, match="killed"):
        with store.table_writer("filter", 3, pa.schema([("x", pa.int64())])) as add:
            add([{"x": 1}])
            raise RuntimeError("killed mid-shard")
    assert not store.exists(store.shard_name("filter", 3, "parquet")) and store.done_shards("filter") == []
    store.write_summary("filter")
    assert json.loads(store.read_text("filter/summary.json"))["shards"] == 0


def test_a_run_on_a_missing_bucket_fails_before_any_work_naming_the_bucket(s3):
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        RunStore("s3://no-such-bucket/run").prepare()


def test_a_location_no_filesystem_can_open_is_a_clear_error(capsys):
    with pytest.raises(LocationError, match="nosuchfs://b/run: cannot open this run location: Protocol not known"):
        RunStore("nosuchfs://b/run")
    assert main(["status", "nosuchfs://b/run"]) == 2
    assert "cannot open this run location" in capsys.readouterr().err


def _generate(out: str) -> None:
    """``editsynth generate`` as a user runs it: its own process, its own local Ray, the AWS_* environment."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    args = ["generate", "--pipeline", "shapes", "--out", out, *[a for s in SETS for a in ("--set", s)]]
    done = subprocess.run([sys.executable, "-m", "editsynth_cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _run_files(store: RunStore) -> dict:
    """What a run made: candidate ids, scores, selection and the exported pairs' bytes."""
    ids = [r["candidate_id"] for s in store.done_shards("render") for r in store.read_table("render", s)]
    scores = {r["candidate_id"]: tuple(repr(r[m]) for m in ("sim_0", "sim_1", "sim_image", "sim_direction"))
              for s in store.done_shards("filter") for r in store.read_table("filter", s)}
    exported = {}
    for name in store.glob("export/webdataset/*/*.tar"):
        with store.open(name) as f, tarfile.open(fileobj=f) as tar:
            exported.update({m.name: tar.extractfile(m).read() for m in tar.getmembers() if not m.name.endswith("json")})
    exported.update({name: store.read_bytes(name) for name in store.glob("export/hf/data/*.parquet")})
    return {"ids": ids, "scores": scores, "exported": exported,
            "selected": sorted(store.read_arrow("filter/selection.parquet")["candidate_id"].to_pylist())}


def test_the_shapes_pipeline_on_s3_makes_what_it_makes_locally_and_the_run_commands_read_it(s3, tmp_path, capsys):
    local, remote = tmp_path / "run", f"s3://{BUCKET}/shapes-run"
    _generate(str(local))
    _generate(remote)
    made = {name: _run_files(RunStore(loc)) for name, loc in (("local", local), ("s3", remote))}
    assert made["s3"]["ids"] and made["s3"]["exported"]
    assert made["s3"] == made["local"]
    assert not list(local.rglob("*.tmp"))

    capsys.readouterr()
    assert main(["status", remote, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(s["units_done"], s["units_planned"]) for s in status["stages"]] == [(2, 2)] * 3

    store = RunStore(remote)
    assert main(["refilter", "--run", remote, "--set", "filter.min_direction=-1", "--set", "filter.min_image=-1",
                 "--set", "filter.min_sim_0=-1", "--set", "filter.min_sim_1=-1",
                 "--set", "filter.max_pairs_per_triple=2"]) == 0
    info = json.loads(store.read_text("filter/selection.json"))
    assert info["selected"] == info["scored"] == len(made["s3"]["scores"])   # every candidate passes now
    assert main(["refilter", "--run", str(local), "--reset"]) == 0
    assert main(["refilter", "--run", remote, "--reset"]) == 0               # back to the run's thresholds
    assert _run_files(store)["selected"] == made["s3"]["selected"]

    assert main(["audit", "--run", remote]) == 0
    assert f"{remote}/report/audit.html" in capsys.readouterr().out
    assert store.size("report/audit.html") > 10_000 and store.exists("report/oracle.json")


def test_a_marker_written_by_another_process_is_seen_at_once(s3):
    # Regression: s3fs caches listings, and Ray actors write markers after the driver has listed.
    import s3fs

    store = RunStore(f"s3://{BUCKET}/seen")
    store.write_stats(_stats("captions", 0))
    assert store.done_shards("captions") == [0] and not store.is_done("captions", 1)
    store.fs.ls(f"{BUCKET}/seen/captions")                  # a listing s3fs would otherwise keep
    other = s3fs.S3FileSystem(skip_instance_cache=True)     # another process's client
    other.pipe(f"{BUCKET}/seen/captions/captions-00001.stats.json", b"{}")
    assert store.done_shards("captions") == [0, 1] and store.is_done("captions", 1)

"""``editsynth status``: a run's progress from its done markers alone."""
from __future__ import annotations

import json
import os

import editsynth_cli
from datagen.config import load_config, save_run_config
from datagen.records import ShardStats
from datagen.status import run_status
from datagen.store import RunStore


def make_run(root, done: dict[str, int], seconds_apart: float = 600.0):
    """A run of 10 planned units with ``done[stage]`` units done, one marker every 10 minutes."""
    cfg = load_config("shapes", ["captions.num_triples=100", "captions.shard_size=10"])
    save_run_config(cfg, root)
    store = RunStore(root)
    for stage, n in done.items():
        for shard in range(n):
            store.write_stats(ShardStats(stage=stage, shard=shard, count_in=10, count_out=8, seconds=30.0,
                                         rejections={"malformed_reply": 1} if stage == "captions" else {},
                                         extra={"host": f"node{shard % 2}", "node_id": f"{shard % 2:016x}"}))
            t = 1_000_000 + shard * seconds_apart
            os.utime(store.stats_path(stage, shard), (t, t))
    return store


def test_status_counts_units_throughput_eta_failures_and_placement(tmp_path):
    make_run(tmp_path, {"captions": 10, "render": 4})
    status = {s["stage"]: s for s in run_status(tmp_path)["stages"]}
    captions, render, filter_ = status["captions"], status["render"], status["filter"]
    assert (captions["units_done"], captions["units_planned"], captions["eta_hours"]) == (10, 10, 0.0)
    assert captions["failures"] == {"malformed_reply": 10}
    assert render["units_done"] == 4 and render["count_out"] == 32
    assert render["units_per_hour"] == 6.0              # a marker every 10 minutes
    assert render["items_out_per_hour"] == 48.0          # 8 out per unit
    assert render["eta_hours"] == 1.0                    # 6 units left at 6 an hour
    assert render["where"] == {"node0 (00000000)": 2, "node1 (00000000)": 2}
    assert filter_["units_done"] == 0 and filter_["eta_hours"] is None


def test_status_command_prints_a_table_and_json(tmp_path, capsys):
    make_run(tmp_path, {"captions": 10, "render": 4})
    assert editsynth_cli.main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "render" in out and "4/10 units" in out and "ETA 1.0 h" in out
    assert editsynth_cli.main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"][1]["units_done"] == 4


def test_status_of_a_folder_that_is_no_run_says_so(tmp_path, capsys):
    assert editsynth_cli.main(["status", str(tmp_path)]) == 2
    assert "config.json not found" in capsys.readouterr().err

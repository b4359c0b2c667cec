"""``editsynth status RUN``: where a run stands, read from its done markers alone.

Per stage: units (shards) done of those planned, items in and out, throughput (over the wall
time between the first and the last done marker, so it counts every actor at once), an ETA at
that rate, failures and rejections by reason, and where the units ran (host and Ray node).
It reads only the stats files (the done markers), never the data, so it is cheap on any run
and safe while the run is going.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from .config import ConfigError, load_run_config
from .store import RunStore

STAGES = ("captions", "render", "filter")


def stage_status(store: RunStore, stage: str, planned: int) -> dict:
    """The figures of one stage from its done markers; ``planned``: the units the run will write."""
    stats = store.read_stats(stage)
    done = len(stats)
    times = sorted(store.modified_all(f"{stage}/{stage}-*.stats.json").values())
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    # n markers over a span are n - 1 intervals: the first one's own time is not in the span.
    units_per_hour = (done - 1) / span * 3600 if span > 0 else None
    remaining = max(planned - done, 0)
    failures: Counter = Counter()
    where: Counter = Counter()
    for s in stats:
        failures.update(s.rejections)
        where[f"{s.extra.get('host', '?')} ({str(s.extra.get('node_id', ''))[:8] or 'no Ray'})"] += 1
    count_in, count_out = sum(s.count_in for s in stats), sum(s.count_out for s in stats)
    return {
        "stage": stage, "units_done": done, "units_planned": planned,
        "count_in": count_in, "count_out": count_out,
        "seconds_per_unit": round(sum(s.seconds for s in stats) / done, 2) if done else None,
        "units_per_hour": round(units_per_hour, 2) if units_per_hour else None,
        "items_out_per_hour": round(units_per_hour * count_out / done, 1) if units_per_hour else None,
        "eta_hours": (0.0 if not remaining else round(remaining / units_per_hour, 2) if units_per_hour else None),
        "failures": dict(failures.most_common()),
        "where": dict(where.most_common()),
    }


def run_status(run: str | Path) -> dict:
    cfg = load_run_config(run)
    store = RunStore(run)
    return {"run": str(run), "pipeline": cfg.name,
            "stages": [stage_status(store, stage, cfg.captions.num_shards) for stage in STAGES]}


def _hours(h: float | None) -> str:
    if h is None:
        return "-"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def print_status(status: dict) -> None:
    print(f"run {status['run']} (pipeline {status['pipeline']})")
    for s in status["stages"]:
        pct = 100 * s["units_done"] / s["units_planned"] if s["units_planned"] else 0.0
        rate = f"{s['items_out_per_hour']:,.0f} out/h" if s["items_out_per_hour"] else "rate: -"
        print(f"  {s['stage']:<9} {s['units_done']:>6}/{s['units_planned']} units ({pct:5.1f} %)  "
              f"{s['count_in']:,} in -> {s['count_out']:,} out  {rate}  ETA {_hours(s['eta_hours'])}")
        if s["failures"]:
            print("            failures: " + ", ".join(f"{k} {v}" for k, v in s["failures"].items()))
        if s["where"]:
            print("            ran on: " + ", ".join(f"{k}: {v}" for k, v in s["where"].items()))


def status_command(args) -> int:
    try:
        status = run_status(args.run)
    except (ConfigError, FileNotFoundError) as e:
        print(f"editsynth status: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status))
    else:
        print_status(status)
    return 0


def register(sub) -> None:
    p = sub.add_parser("status", help="where a run stands: units done, throughput, ETA, failures, where units ran",
                       description="Read a run's done markers (never its data) and print, per stage, units "
                                   "done of planned, throughput, ETA, failures by reason and where units ran.")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=status_command)

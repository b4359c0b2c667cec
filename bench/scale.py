"""Selection and audit at paper scale: refilter and audit of 45M stored candidate scores.

Writes a temporary run in the filter stage's own format (one scores parquet per shard with
the ScoredCandidate schema, an empty image tar, a stats file written last, a config.json of
the ``paper`` pipeline), then times ``editsynth refilter`` and ``editsynth audit`` on it, each
in its own process, with its peak RSS and CPU time (the kernel's rusage of the child, wait4).
Then renders, with the shapes model, a small work and a 10x larger one, each in a fresh render
actor, and records each actor's peak RSS (bench/render_memory.py; ``--render-triples 0`` skips it).

  python bench/scale.py --triples 4500 --candidates 100        # a quick run (450K candidates)
  python bench/scale.py --triples 450000 --candidates 100      # the paper: 45M candidates
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from datagen.config import load_config  # noqa: E402
from datagen.filter.table import SCORES_SCHEMA, STAGE  # noqa: E402
from datagen.records import ShardStats, stable_id  # noqa: E402
from datagen.store import RunStore  # noqa: E402

EDIT_KINDS = ("recolour", "reshape", "resize", "background", "add", "remove", "move", "")
VERBS = ("make", "turn", "add", "remove", "change", "put", "replace", "have")
FAILED_SHARE = 0.01   # candidates whose render or scoring failed: NaN scores, status failed


def synthetic_shard(shard: int, triples: int, candidates: int, seed: int = 0) -> pa.Table:
    """One filter shard of ``triples`` x ``candidates`` ScoredCandidate rows, built columnwise.

    Scores are drawn near ViT-L/14's ranges and rounded to 3 decimals, so sim_direction has
    many ties inside a triple (top-k must break them by candidate_id).
    """
    rng = np.random.default_rng([seed, shard])
    n = triples * candidates
    tids = pa.array([stable_id("bench-triple", seed, shard, t) for t in range(triples)])
    per_row = np.repeat(np.arange(triples), candidates)
    index = np.tile(np.arange(candidates), triples)
    triple_id = tids.take(per_row)
    suffix = pa.array([f"{i:04d}" for i in range(candidates)]).take(index)
    candidate_id = pc.binary_join_element_wise(triple_id, suffix, "_")
    kind = rng.integers(0, len(EDIT_KINDS), triples)
    verb = rng.integers(0, len(VERBS), triples)
    caption_in = pa.array([f"a photo of object {shard}-{t} on a table" for t in range(triples)])
    caption_out = pa.array([f"a photo of a changed object {shard}-{t} on a table" for t in range(triples)])
    instruction = pa.array([f"{VERBS[v]} object {t} different" for t, v in enumerate(verb)])
    sims = {"sim_0": rng.normal(0.26, 0.04, n), "sim_1": rng.normal(0.25, 0.04, n),
            "sim_image": rng.normal(0.78, 0.08, n), "sim_direction": rng.normal(0.17, 0.08, n)}
    sims = {k: np.round(v, 3) for k, v in sims.items()}
    failed = rng.uniform(size=n) < FAILED_SHARE
    for v in sims.values():
        v[failed] = np.nan
    kept = (~failed & (sims["sim_0"] >= 0.1) & (sims["sim_1"] >= 0.1) & (sims["sim_direction"] >= 0.0)
            & (sims["sim_image"] >= 0.5))
    columns = {
        "candidate_id": candidate_id, "triple_id": triple_id, "index": pa.array(index, pa.int64()),
        "seed": pa.array(rng.integers(0, 2 ** 62, n), pa.int64()),
        "p": pa.array(rng.uniform(0.1, 0.9, n)), "cfg_scale": pa.array(rng.uniform(7.5, 15.0, n)),
        "mode": pa.array(np.full(n, "self")), "steps": pa.array(np.full(n, 100), pa.int64()),
        "model_id": pa.array(np.full(n, "stable-diffusion-v1-5/stable-diffusion-v1-5")),
        "input_caption": caption_in.take(per_row), "instruction": instruction.take(per_row),
        "output_caption": caption_out.take(per_row),
        "edit_kind": pa.array([EDIT_KINDS[k] for k in kind]).take(per_row),
        "image_format": pa.array(np.full(n, "jpg")),
        **{k: pa.array(v) for k, v in sims.items()},
        "status": pa.array(np.where(failed, "failed", "ok")),
        "failure_reason": pa.array(np.where(failed, "render_failed: bench", "")),
        "images_kept": pa.array(kept),
    }
    return pa.table(columns, schema=SCORES_SCHEMA)


def write_run(root: Path, triples: int, candidates: int, shard_triples: int) -> int:
    """The run folder, shard by shard (one shard in memory at a time); returns the rows written."""
    store = RunStore(root)
    cfg = load_config("paper", [f"captions.num_triples={triples}", f"captions.shard_size={shard_triples}",
                                f"render.num_candidates={candidates}"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(cfg.model_dump_json(indent=1))
    rows = 0
    for shard in range((triples + shard_triples - 1) // shard_triples):
        t0 = time.time()
        table = synthetic_shard(shard, min(shard_triples, triples - shard * shard_triples), candidates)
        path = store.shard_path(STAGE, shard, "parquet")
        with store.atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        with store.atomic_path(store.shard_path(STAGE, shard, "tar")) as tmp:
            tarfile.open(tmp, "w").close()   # no images: the audit shows none, counts are unaffected
        ok = pc.equal(table["status"], "ok")
        failed = table.num_rows - pc.sum(ok).as_py()
        store.write_stats(ShardStats(
            stage=STAGE, shard=shard, count_in=table.num_rows, count_out=table.num_rows - failed,
            seconds=round(time.time() - t0, 3), rejections={"render_failed": failed} if failed else {},
            extra={"images_kept": pc.sum(table["images_kept"]).as_py(), "oracle_judged": 0,
                   "clip_model": cfg.filter.clip_model, "device": "synthetic", "score_seconds": 0.0,
                   "images_per_s": 0.0}))
        rows += table.num_rows
    return rows


def measure(cmd: list[str]) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MB, output) of ``cmd``, from the kernel's rusage of
    that child (wait4): exact peak, and CPU time that other load on the cores does not inflate."""
    import threading

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    out = "".join(chunks)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triples", type=int, default=4500)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--shard-triples", type=int, default=1000, help="triples per shard (paper: captions.shard_size)")
    ap.add_argument("--dir", default=None, help="where the temporary run goes (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run")
    ap.add_argument("--render-triples", type=int, default=8,
                    help="triples of the small render work (the large has 10x; 0: skip the render figures)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="editsynth-scale-", dir=args.dir))
    run = tmp / "run"
    try:
        t0 = time.time()
        rows = write_run(run, args.triples, args.candidates, args.shard_triples)
        write_s = time.time() - t0
        size_mb = sum(p.stat().st_size for p in run.rglob("*")) / 2 ** 20
        print(f"wrote {rows:,} candidate rows in {write_s:.1f} s ({size_mb:.0f} MB on disk) to {run}", flush=True)
        cli = [sys.executable, "-c", "import editsynth_cli,sys; sys.exit(editsynth_cli.main())"]
        load = os.getloadavg()[0]
        refilter_s, refilter_cpu, refilter_mb, out = measure([*cli, "refilter", "--run", str(run),
                                                              "--set", "filter.min_image=0.7"])
        print(out.strip().splitlines()[0] if out.strip() else "", flush=True)
        print(f"refilter: {refilter_s:.1f} s wall, {refilter_cpu:.1f} s CPU, peak RSS {refilter_mb:.0f} MB", flush=True)
        audit_s, audit_cpu, audit_mb, out = measure([*cli, "audit", "--run", str(run)])
        print(next((line for line in out.splitlines() if line.startswith("report:")), ""), flush=True)
        print(f"audit: {audit_s:.1f} s wall, {audit_cpu:.1f} s CPU, peak RSS {audit_mb:.0f} MB "
              f"(over all rows; it draws and shows a sample of whole shards: --max-rows 200000)", flush=True)
        load = max(load, os.getloadavg()[0])
        sample_rows = json.loads((run / "report" / "audit.json").read_text())["rows_used"]
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    render = {"render_peak_rss_mb_small": None, "render_peak_rss_mb_large": None}
    if args.render_triples:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from render_memory import measure as measure_render

        render = measure_render(args.render_triples)
        print(f"render actor peak RSS: {render['render_peak_rss_mb_small']} MB for "
              f"{render['render_candidates_small']} candidates, {render['render_peak_rss_mb_large']} MB for "
              f"{render['render_candidates_large']}", flush=True)
    print(json.dumps({
        "candidates": rows, "triples": args.triples, "candidates_per_triple": args.candidates,
        "write_s": round(write_s, 1), "disk_mb": round(size_mb),
        "refilter_s": round(refilter_s, 2), "refilter_cpu_s": round(refilter_cpu, 2),
        "refilter_peak_rss_mb": round(refilter_mb),
        "audit_s": round(audit_s, 2), "audit_cpu_s": round(audit_cpu, 2), "audit_peak_rss_mb": round(audit_mb),
        "audit_sample_rows": sample_rows, "load_average_1m": round(load, 1),
        **render,
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()

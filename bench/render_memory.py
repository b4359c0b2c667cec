"""Stage 2's memory against the size of its work: the same shapes render, one shard of N triples and
one of 10N, each in a fresh local Ray (a fresh actor); the render actor's peak RSS comes from the
shard's stats (``peak_rss_mb``). Streaming a shard chunk by chunk keeps the two close; holding a
shard's images until the end would grow with it.

    python bench/render_memory.py --triples 8

Last line: JSON with ``render_peak_rss_mb_small`` and ``render_peak_rss_mb_large``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def render_peak_rss_mb(triples: int, candidates: int, size: int, work: Path) -> dict:
    out = work / f"render-{triples}"
    sets = [f"captions.num_triples={triples}", f"captions.shard_size={triples}", f"render.num_candidates={candidates}",
            "render.steps=1", f"render.height={size}", f"render.width={size}", "render.resources.batch_size=8",
            "render.resources.actors=1"]
    done = subprocess.run([sys.executable, str(REPO / "run_generation.py"), "--pipeline", "shapes", "--stages",
                           "captions,render", "--out", str(out), *[a for s in sets for a in ("--set", s)]],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    (stats,) = [json.loads(p.read_text()) for p in (out / "render").glob("render-*.stats.json")]
    return {"candidates": stats["extra"]["candidates"], "bytes_written": stats["extra"]["bytes_written"],
            "peak_rss_mb": stats["extra"]["peak_rss_mb"]}


def measure(triples: int, candidates: int = 4, size: int = 512) -> dict:
    with tempfile.TemporaryDirectory(prefix="es-render-mem-") as d:
        small = render_peak_rss_mb(triples, candidates, size, Path(d))
        large = render_peak_rss_mb(10 * triples, candidates, size, Path(d))
    return {"render_peak_rss_mb_small": small["peak_rss_mb"], "render_peak_rss_mb_large": large["peak_rss_mb"],
            "render_candidates_small": small["candidates"], "render_candidates_large": large["candidates"],
            "render_bytes_written_large": large["bytes_written"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triples", type=int, default=8, help="triples of the small work (the large has 10x)")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (at 512 a held shard would show)")
    args = parser.parse_args()
    result = measure(args.triples, args.candidates, args.size)
    print(f"render actor peak RSS: {result['render_peak_rss_mb_small']} MB for {result['render_candidates_small']} "
          f"candidates, {result['render_peak_rss_mb_large']} MB for {result['render_candidates_large']} "
          f"({result['render_bytes_written_large'] / 1e6:.1f} MB written)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

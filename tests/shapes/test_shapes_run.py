"""A short run of the embedded default pipeline on the SHIPPED shapes models, end to end through
the real command line, judged by the oracle: bounds a worse model or a filter that stops helping
would break (24 candidates: CI minutes, not a benchmark)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.shapes.models import SHIPPED_CLIP, SHIPPED_T2I

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "editsynth_cli.py")]


def _run(args, timeout=600):
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    if not (SHIPPED_T2I / "model_index.json").exists() or not (SHIPPED_CLIP / "open_clip_config.json").exists():
        pytest.fail("the shipped shapes models are missing from datagen/shapes/weights")
    out = tmp_path_factory.mktemp("shapes-run")
    _run([sys.executable, str(ROOT / "run_generation.py"), "--pipeline", "shapes", "--out", str(out),
          "--set", "captions.num_triples=12", "--set", "captions.shard_size=6", "--set", "render.num_candidates=2",
          "--set", "render.steps=10"])
    _run(CLI + ["audit", "--run", str(out)])
    _run(CLI + ["shapes", "report", "--run", str(out), "--mode-triples", "4", "--mode-candidates", "2"])
    return out


def test_shapes_run_writes_every_stage_and_the_export(shapes_run):
    for stage in ("captions", "render", "filter"):
        assert json.loads((shapes_run / stage / "summary.json").read_text())["shards"] == 2
        for stats in (shapes_run / stage).glob("*.stats.json"):   # where each shard ran, on disk
            extra = json.loads(stats.read_text())["extra"]
            assert extra["host"] and len(extra["node_id"]) > 8, (stats, extra)
    assert list((shapes_run / "export").rglob("*.tar")) and list((shapes_run / "export").rglob("*.parquet"))
    assert (shapes_run / "report" / "audit.html").stat().st_size > 10_000


def test_oracle_report_has_the_agreed_keys_and_judged_every_candidate(shapes_run):
    report = json.loads((shapes_run / "report" / "oracle.json").read_text())
    for key in ("pairs_correct_rate_all", "pairs_correct_rate_kept", "filter_precision", "filter_recall",
                "pairs_correct_rate_all_full", "pairs_correct_rate_kept_full", "filter_precision_full",
                "filter_recall_full", "p2p_modes", "p2p_modes_full", "t2i_caption_match_rate", "clip_top1",
                "by_edit_kind"):
        assert key in report, key
    assert set(report["p2p_modes"]) == set(report["p2p_modes_full"]) == {"self", "cross", "none"}
    # Keeping what captions leave unsaid is a further demand: never more pairs pass it.
    assert all(report["p2p_modes_full"][m] <= report["p2p_modes"][m] for m in report["p2p_modes"])
    assert report["pairs_correct_rate_all_full"] <= report["pairs_correct_rate_all"]
    assert all(0.0 <= v <= 1.0 for v in report["p2p_modes"].values())
    assert report["labelled"] == 12 * 2


# The main job's pairs with the shipped models at this run's 10 steps: 0.824 exactly correct
# (pipelines.yaml, 200 triples x 4). Three standard errors of a rate over 24 candidates below it
# is "well below": a model that got worse, not the luck of 12 triples.
SHIPPED_PAIRS_CORRECT_AT_10_STEPS = 0.824
LABELLED = 12 * 2


def test_pairs_are_not_well_below_the_shipped_models_figures(shapes_run):
    report = json.loads((shapes_run / "report" / "oracle.json").read_text())
    p = SHIPPED_PAIRS_CORRECT_AT_10_STEPS
    floor = p - 3 * (p * (1 - p) / LABELLED) ** 0.5
    assert report["pairs_correct_rate_all"] >= floor, report


def test_the_filter_raises_precision(shapes_run):
    report = json.loads((shapes_run / "report" / "oracle.json").read_text())
    # The kept pairs are more often right than all candidates (or all kept are right); a filter
    # that keeps nothing has no rate and fails here too.
    assert report["pairs_correct_rate_kept"] > report["pairs_correct_rate_all"] \
        or report["pairs_correct_rate_kept"] == 1.0, report


def test_shipped_models_clear_loose_quality_bounds(shapes_run):
    report = json.loads((shapes_run / "report" / "oracle.json").read_text())
    assert report["clip_top1"] >= 0.85                       # shipped CLIP: 0.905 held-out
    agreement = report["rendered_caption_agreement"]
    # Chance for the background is 1/6: the rendered images follow their captions' backgrounds.
    assert agreement["background"] >= 0.35, agreement

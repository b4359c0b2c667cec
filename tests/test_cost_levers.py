"""Issue 41 end to end on Ray: a calibration run, its preview rule, then waves and the rule in a run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from datagen.config import load_config
from datagen.filter.audit_html import previews_section
from datagen.preview_calibration import preview_report
from datagen.run import run_pipeline
from datagen.store import RunStore

REPO = Path(__file__).resolve().parents[1]


def _fast(*extra: str):
    return load_config("shapes-fast", ["captions.num_triples=4", "captions.shard_size=2", "render.num_candidates=6",
                                       "render.steps=6", "render.preview.fraction=0.5", "export.formats=[]",
                                       "filter.min_sim_0=0.5", "filter.min_sim_1=0.5", "filter.keep_min_direction=-1",
                                       # one passing candidate is enough: a first wave that ends its triple
                                       "render.waves.k=1", "render.waves.margin=0", *extra])


def test_calibrate_on_a_run_then_render_in_waves_with_the_rule(tmp_path, ray_local):
    calib = RunStore(tmp_path / "calib")
    run_pipeline(_fast("render.waves=null"), calib.root, ["captions", "render", "filter"])
    rows = [r for s in (0, 1) for r in calib.read_table("render", s)]
    assert len(rows) == 4 * 6 and all(r["preview_sim_0"] is not None for r in rows)

    # Thresholds that half the candidates pass: the median final sim_direction.
    directions = sorted(r["sim_direction"] for s in (0, 1) for r in calib.read_table("filter", s))
    strict = f"filter.min_direction={directions[len(directions) // 2]}"
    done = subprocess.run([sys.executable, str(REPO / "editsynth_cli.py"), "preview-rule", "--run", str(calib.root),
                           "--target-recall", "0.9", "--kind", "threshold", "--set", strict],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rule_path = calib.root / "report" / "preview_rule.json"
    rule = json.loads(rule_path.read_text())
    assert rule["calibration"]["recall"] >= 0.9 and rule["fraction"] == 0.5 and rule["steps"] == 6
    assert "preview_vs_final" in done.stdout
    report = preview_report(calib.root)          # what the audit shows (report/audit.json: previews)
    assert report["rule"]["measured_on"] == "this run" and report["rule"]["recall"] >= 0.9
    assert -1 <= report["sim_direction"]["correlation"] <= 1
    deciles = report["sim_direction"]["by_preview_decile"]
    assert sum(d["n"] for d in deciles) == report["with_final_scores"] == 4 * 6
    assert [d["preview_mean"] for d in deciles] == sorted(d["preview_mean"] for d in deciles)
    page = previews_section(report)               # the audit page's section, from the same numbers
    assert 'data-key="previews.rule.recall"' in page and page.count("<svg") == 4

    fast = RunStore(tmp_path / "fast")
    run_pipeline(_fast(f"render.preview.rule={rule_path}", strict), fast.root, ["captions", "render", "filter"])
    assert json.loads((fast.root / "preview_rule.json").read_text()) == rule          # saved with the run
    assert preview_report(fast.root)["rule"]["measured_on"] == "its calibration run"
    totals = json.loads((fast.root / "render" / "render-totals.json").read_text())
    started = sum(len(fast.read_table("render", s)) for s in (0, 1))
    assert totals["skipped"] == 4 * 6 - started and totals["unet_rows_saved_waves"] > 0
    assert totals["triples_enough"] + totals["triples_covered"] + totals["triples_hopeless"] + totals["triples_all_waves"] == 4
    stats = fast.read_stats("render")[0].extra
    for key in ("unet_rows", "unet_rows_saved_preview", "unet_rows_saved_waves", "stopped", "previewed"):
        assert key in stats
    # The steps lever, against shapes-fast's steps_reference (50): what 50 steps would have cost, less 6.
    assert stats["unet_rows_saved_steps"] == round(stats["unet_rows"] * (50 - 6) / 6)
    assert totals["unet_rows_saved_steps"] == sum(s.extra["unet_rows_saved_steps"] for s in fast.read_stats("render"))
    scores = [r for s in (0, 1) for r in fast.read_table("filter", s)]
    assert len(scores) == started

    # render-one reproduces a stored candidate of the run, preview included.
    kept = next(r["candidate_id"] for r in scores if r["images_kept"])
    done = subprocess.run([sys.executable, str(REPO / "editsynth_cli.py"), "render-one", "--run", str(fast.root),
                           "--candidate", kept, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "identical to" in done.stdout
    assert (tmp_path / "one.preview_edited.png").is_file()

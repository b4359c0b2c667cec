"""editsynth plan: the projection follows the config and the measured throughputs it cites."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen import plan as planning
from datagen.config import load_config
from editsynth_cli import main

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def test_paper_plan_counts_rows_and_projects_gpu_hours_from_the_measured_rate():
    p = planning.plan(load_config("paper"), "paper")
    assert p.candidates == 450_000 * 100 and p.gpus == 8
    assert p.unet_rows == 4 * 100 * p.candidates
    per_gpu = planning.RENDER_PAIRS_PER_S * 20 / 100          # 20-step rate scaled to 100 steps
    assert p.render_gpu_hours == pytest.approx(p.candidates / per_gpu / 3600)
    assert p.render_wall_hours == pytest.approx(p.render_gpu_hours / 8)
    assert p.filter_gpu_hours == pytest.approx(2 * p.candidates / planning.CLIP_IMAGES_PER_S / 3600)
    assert p.export_pairs_max == 450_000 * 4
    assert any("H200" in a for a in p.assumptions)


def test_plan_follows_overrides_and_gpu_count():
    base = planning.plan(load_config("paper"), "paper")
    half = planning.plan(load_config("paper", ["render.steps=50"]), "paper", gpus=16)
    assert half.unet_rows == base.unet_rows // 2
    assert half.render_gpu_hours == pytest.approx(base.render_gpu_hours / 2)
    assert half.render_wall_hours == pytest.approx(base.render_wall_hours / 4)


def test_no_projection_where_nothing_was_measured():
    p = planning.plan(load_config("shapes"), "shapes")
    assert p.render_gpu_hours is None and p.unet_flops is None and p.filter_gpu_hours is None
    assert p.unet_rows == 4 * 15 * 200 * 4


def test_cli_prints_text_and_json(capsys):
    assert main(["plan", "--pipeline", "paper", "--gpus", "4"]) == 0
    text = capsys.readouterr().out
    assert "18,000,000,000 UNet forward passes" in text and "assumptions:" in text and "4 GPU(s)" in text
    assert main(["plan", "--pipeline", "smoke", "--json", "--set", "captions.num_triples=10"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["candidates"] == 40 and data["gpus"] == 1
    assert main(["plan", "--pipeline", "nope"]) == 2


def test_the_figures_it_projects_from_are_those_of_docs_benchmarks():
    docs = DOCS.read_text()
    assert f"{planning.RENDER_PAIRS_PER_S} candidate pairs/s" in docs
    assert f"{planning.CLIP_IMAGES_PER_S:,} images/s" in docs
    assert f"{planning.UNET_FLOPS_PER_ROW_SD15_512 / 1e12:.2f} TFLOP per UNet row" in docs
    assert f"{planning.SCORE_BYTES_PER_ROW} bytes per candidate row" in docs


def test_the_paper_recipe_works_in_units_of_a_few_gpu_minutes():
    p = planning.plan(load_config("paper"), "paper")
    assert p.units == 450_000 // load_config("paper").captions.shard_size
    assert 1 <= p.render_unit_gpu_minutes <= 30          # a lost actor costs minutes, not the 55 h of a 1,000-triple shard
    assert "GPU-minutes" in planning.format_plan(p)


def test_images_are_planned_once_and_stage_1_is_a_short_wait_before_rendering():
    kept = planning.plan(load_config("paper"), "paper")
    every = planning.plan(load_config("paper", ["render.store=all"]), "paper")
    assert kept.render_images_bytes == 0 and every.render_images_bytes == every.kept_images_bytes_max > 0
    in_flight = 16 * 16                                         # the paper's captions actors x concurrency
    assert kept.captions_wall_hours == pytest.approx(450_000 * planning.LLM_SECONDS_PER_REPLY / in_flight / 3600)
    assert kept.captions_wall_hours < kept.render_wall_hours / 1000
    assert planning.plan(load_config("shapes"), "shapes").captions_wall_hours is None   # the grammar: no LLM

import subprocess
import sys
from pathlib import Path

import pytest

from datagen.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["shapes", "paper", "smoke"])
def test_named_pipelines_load(name):
    cfg = load_config(name)
    assert cfg.name == name


def test_paper_pipeline_carries_the_reference_recipe():
    cfg = load_config("paper")
    assert cfg.render.num_candidates == 100 and (cfg.render.p_min, cfg.render.p_max) == (0.1, 0.9)
    assert (cfg.render.cfg_min, cfg.render.cfg_max) == (7.5, 15.0)
    assert (cfg.filter.min_sim_0, cfg.filter.min_sim_1, cfg.filter.min_direction) == (0.2, 0.2, 0.2)
    assert cfg.filter.min_image == 0.75 and cfg.filter.max_pairs_per_triple == 4


def test_override_sets_any_key_with_yaml_typing():
    cfg = load_config("shapes", ["captions.num_triples=1000", "render.mode=cross", "filter.min_image=0.6"])
    assert cfg.captions.num_triples == 1000 and cfg.render.mode == "cross" and cfg.filter.min_image == 0.6


@pytest.mark.parametrize("override, key", [
    ("captions.num_triples=-1", "captions.num_triples"),
    ("render.p_max=1.5", "render.p_max"),
    ("render.num_candidates=many", "render.num_candidates"),
    ("render.typo_key=1", "render.typo_key"),
    ("render.p_min=0.9", "render"),       # p_min > p_max (0.9)... equal is allowed
])
def test_bad_values_name_the_key(override, key):
    if override == "render.p_min=0.9":
        override = "render.p_min=0.95"
    with pytest.raises(ConfigError) as err:
        load_config("shapes", [override])
    assert key in str(err.value)


def test_unknown_pipeline_lists_the_known_ones():
    with pytest.raises(ConfigError, match="shapes"):
        load_config("nope")


def test_cli_exits_non_zero_naming_the_key(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "run_generation.py"), "--pipeline", "shapes", "--stages",
                           "captions", "--out", str(tmp_path), "--set", "captions.num_triples=-1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    assert "captions.num_triples" in proc.stderr
    assert not (tmp_path / "captions").exists()

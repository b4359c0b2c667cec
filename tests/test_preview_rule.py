"""The preview stop rule: calibrated for a target recall, saved, loaded and reused as saved."""
from __future__ import annotations

import numpy as np
import pytest

from datagen.preview_rule import fit_rule, load_rule, rule_metrics, save_rule


def calibration_rows(n: int = 600, seed: int = 0):
    """Previews whose direction and sim_1 predict the label noisily, as half-denoised ones do."""
    rng = np.random.default_rng(seed)
    kept = rng.random(n) < 0.15
    x = rng.normal(0.9, 0.03, size=(n, 4))
    x[:, 1] += 0.03 * kept
    x[:, 3] = rng.normal(0.1, 0.1, n) + 0.25 * kept
    return x, kept


@pytest.mark.parametrize("kind", ["logistic", "threshold"])
def test_calibration_meets_the_target_recall_and_stops_rejected_candidates(kind):
    x, kept = calibration_rows()
    rule = fit_rule(x, kept, target_recall=0.9, fraction=0.3, steps=15, kind=kind)
    m = rule_metrics(rule, x, kept)
    assert m["recall"] >= 0.9
    assert m["stop_rate_rejected"] > 0.3          # it stops a good share of what would fail
    assert rule.calibration["recall"] == m["recall"]


def test_a_stricter_recall_target_stops_fewer():
    x, kept = calibration_rows()
    loose = fit_rule(x, kept, 0.8, 0.3, 15)
    strict = fit_rule(x, kept, 0.99, 0.3, 15)
    assert rule_metrics(strict, x, kept)["stop_rate"] < rule_metrics(loose, x, kept)["stop_rate"]


def test_a_saved_rule_is_reused_exactly(tmp_path):
    x, kept = calibration_rows()
    rule = fit_rule(x, kept, 0.95, 0.3, 15, source="runs/calib")
    loaded = load_rule(save_rule(rule, tmp_path / "rule.json"))
    assert loaded == rule
    assert (loaded.keep(x) == rule.keep(x)).all()


def test_a_preview_that_cannot_be_judged_is_never_stopped():
    x, kept = calibration_rows()
    rule = fit_rule(x, kept, 0.9, 0.3, 15)
    bad = np.array([[np.nan, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, -1.0]])
    assert rule.keep(bad).tolist() == [True, False]


def test_a_rule_refuses_previews_taken_elsewhere_in_denoising():
    x, kept = calibration_rows()
    rule = fit_rule(x, kept, 0.9, 0.3, 15)
    rule.check_matches(0.3, 15)
    with pytest.raises(ValueError, match="fraction 0.3 of 15 steps"):
        rule.check_matches(0.5, 15)


def test_calibration_refuses_too_few_kept_candidates():
    x, _ = calibration_rows(50)
    with pytest.raises(ValueError, match="at least 2 kept"):
        fit_rule(x, np.zeros(50, dtype=bool), 0.9, 0.3, 15)


def test_a_file_that_is_not_a_rule_is_refused_by_name(tmp_path):
    (tmp_path / "r.json").write_text('{"weights": 3}')
    with pytest.raises(ValueError, match="not a preview rule"):
        load_rule(tmp_path / "r.json")

"""The pure statistics of the P2P study: sign test, AUC, threshold sweep."""
import pytest

from shapes_lab.paired_stats import auc, rate, sign_test, sweep_thresholds, threshold_sweep


def test_sign_test_counts_only_discordant_pairs_and_matches_the_exact_binomial():
    # 10 pairs: a wins 8 discordant ones, b wins 1, both right in 1, both wrong in none.
    a = {i: i < 9 for i in range(10)}
    b = {i: i in (0, 9) for i in range(10)}
    res = sign_test(a, b)
    assert (res["pairs"], res["a_only"], res["b_only"], res["both"], res["neither"]) == (10, 8, 1, 1, 0)
    # P(X <= 1 or X >= 8), X ~ Bin(9, 1/2) = 2 * (1 + 9) / 512
    assert res["p_value"] == pytest.approx(20 / 512, rel=1e-3)
    assert res["difference"] == pytest.approx(0.7)


def test_sign_test_pairs_by_key_not_by_position():
    a = {("t1", 0): True, ("t1", 1): False, ("t2", 0): True}
    b = {("t2", 0): True, ("t1", 1): False, ("t1", 0): True, ("t9", 0): False}   # other order, one extra key
    res = sign_test(a, b)
    assert res["pairs"] == 3 and res["a_only"] == res["b_only"] == 0 and res["p_value"] == 1.0


def test_sign_test_refuses_arms_with_no_common_key():
    with pytest.raises(ValueError, match="share no pair key"):
        sign_test({1: True}, {2: True})


def test_auc_is_one_for_perfect_separation_half_for_ties_and_none_for_one_class():
    assert auc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5
    assert auc([0.3, 0.4], [True, True]) is None


def test_threshold_sweep_reports_kept_share_recall_and_precision():
    rows = threshold_sweep([0.9, 0.8, 0.6, 0.4], [True, False, True, False], [0.5, 0.85, 0.95])
    assert rows[0] == {"threshold": 0.5, "kept": 3, "kept_share": 0.75, "recall": 1.0, "precision": 0.6667}
    assert rows[1]["kept"] == 1 and rows[1]["precision"] == 1.0 and rows[1]["recall"] == 0.5
    assert rows[2]["kept"] == 0 and rows[2]["precision"] is None


def test_sweep_thresholds_include_the_configured_ones_and_the_deciles():
    ts = sweep_thresholds([i / 100 for i in range(101)], fixed=[0.5, 0.75])
    assert 0.75 in ts and 0.1 in ts and 0.9 in ts and ts == sorted(set(ts)) and len(ts) == 10


def test_rate_of_nothing_is_none():
    assert rate([]) is None and rate([True, False, False, True]) == 0.5

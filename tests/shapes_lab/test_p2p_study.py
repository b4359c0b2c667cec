"""The P2P study end to end on the tiny random models: arms, pairing by seed, resuming, bad input."""
import json

import pytest

from datagen.config import load_config
from shapes_lab import p2p_study
from shapes_lab.p2p_study import arm_p, group_arms, group_specs, new_seed_partners, run_study, study_triples


@pytest.fixture
def cfg(tiny_sd_dir, tiny_clip_dir, one_thread):
    return load_config("shapes", [f"render.model={tiny_sd_dir}", "render.steps=2", "render.cfg_min=1.0",
                                  "render.cfg_max=2.0", f"filter.clip_model={tiny_clip_dir}"])


def test_every_arm_of_a_seed_gets_the_same_seed_and_guidance_and_only_sweep_arms_fix_p():
    cfg = load_config("shapes")
    triples = study_triples(2, seed=0)
    arms = group_arms([0.3, 0.9])["self"]
    specs = group_specs(cfg, triples, 3, arms, "self")
    assert len(specs) == 2 * 3 * len(arms) and len({s.candidate_id for _, _, s in specs}) == len(specs)
    for t in triples:
        for k in range(3):
            seed_specs = {arm: s for arm, kk, s in specs if kk == k and s.triple_id == t.triple_id}
            assert len({(s.seed, s.cfg_scale) for s in seed_specs.values()}) == 1
            assert seed_specs["self_p0.3"].p == 0.3 and seed_specs["self_p0.9"].p == 0.9
    assert arm_p("self_p0.7") == 0.7 and arm_p("self") is None


def test_new_seed_partner_is_the_same_triples_next_seed_wrapping_around():
    keys = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert new_seed_partners(keys, 3) == [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)]


def test_study_reports_every_arm_paired_by_seed_and_resumes_from_its_parts(cfg, tmp_path, monkeypatch):
    out = tmp_path / "study.json"
    report = run_study(cfg, num_triples=2, num_seeds=2, p_sweep=[0.5], out=out)
    arms = ["none", "none_new_seed", "cross", "self", "self_p0.5"]
    assert list(report["arms"]) == arms
    assert all(report["arms"][a]["pairs"] == 4 for a in arms)
    assert set(report["sign_tests"]) == {f"{a}_vs_{b}" for a in ("cross", "self", "self_p0.5")
                                         for b in ("none", "none_new_seed")}
    assert report["sign_tests"]["self_vs_none"]["correct_full"]["pairs"] == 4
    assert json.loads(out.read_text())["arms"] == report["arms"]
    assert sorted(p.name for p in (tmp_path / "study.json.parts").iterdir()) == ["cross.json", "none.json", "self.json"]

    def no_render(*args, **kwargs):
        raise AssertionError("a finished group was rendered again")

    monkeypatch.setattr(p2p_study, "render_group", no_render)
    assert run_study(cfg, num_triples=2, num_seeds=2, p_sweep=[0.5], out=out)["arms"] == report["arms"]
    with pytest.raises(ValueError, match="other settings"):
        run_study(cfg, num_triples=3, num_seeds=2, p_sweep=[0.5], out=out)

    # Another sweep renders the self group again and keeps none and cross.
    rendered = []

    def self_group_only(cfg, triples, num_seeds, group, arms, scorer):
        assert group == "self", f"the {group} group was rendered again for a new sweep"
        rendered.append(arms)
        return [{**r, "arm": "self_p0.3"} if r["arm"] == "self_p0.5" else r
                for r in json.loads((tmp_path / "study.json.parts" / "self.json").read_text())["rows"]]

    monkeypatch.setattr(p2p_study, "render_group", self_group_only)
    again = run_study(cfg, num_triples=2, num_seeds=2, p_sweep=[0.3], out=out)
    assert rendered == [["self", "self_p0.3"]] and "self_p0.3" in again["arms"]
    assert again["arms"]["none"] == report["arms"]["none"]


@pytest.mark.parametrize("kwargs, message", [({"num_seeds": 1}, "at least 2"), ({"num_triples": 0}, "at least 1"),
                                             ({"p_sweep": [0.5, 1.5]}, r"\(0, 1\]")])
def test_bad_study_settings_are_refused_before_anything_renders(cfg, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_study(cfg, **{"num_triples": 2, "num_seeds": 2, "p_sweep": [0.5], **kwargs})


def _row(arm, triple, k, correct, full, sim, kind="recolour"):
    return {"arm": arm, "triple_id": triple, "seed_index": k, "p": 0.5, "edit_kind": kind, "correct": correct,
            "correct_full": full, "preserved": correct, "preserved_full": full, "edit_ok": True, "sim_image": sim}


def test_summary_pairs_arms_by_triple_and_seed_and_judges_the_target_and_the_filter():
    keys = [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    rows = [_row("none", t, k, True, k == 0, 0.5) for t, k in keys]               # 2 of 4 keep un-named facts
    rows += [_row("none_new_seed", t, k, True, False, 0.4) for t, k in keys]
    rows += [_row("self", t, k, True, True, 0.9) for t, k in reversed(keys)]     # all 4, listed in another order
    rows += [_row("cross", t, k, False, False, 0.6) for t, k in keys]
    s = p2p_study.summarise(rows, ["none", "none_new_seed", "self", "cross"])
    assert s["arms"]["self"]["correct_full"] == 1.0 and s["arms"]["none"]["correct_full"] == 0.5
    assert s["arms"]["none"]["unnamed_kept_among_correct"] == 0.5
    t = s["sign_tests"]["self_vs_none"]["correct_full"]
    assert (t["a_only"], t["b_only"], t["both"]) == (2, 0, 2)
    assert s["sign_tests"]["cross_vs_none_new_seed"]["correct_full"]["p_value"] == 1.0
    assert s["target"]["best_sharing_minus_none_correct_full"] == 0.5 and s["target"]["met"]
    assert s["target"]["ceiling_over_none"] == 0.5
    # Over self, cross and none: a higher sim_image goes with the un-named facts kept, but not perfectly.
    assert 0.5 < s["filter_sim_image"]["auc_preserved_full"] < 1.0 and s["filter_sim_image"]["pairs"] == 12

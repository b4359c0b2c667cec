"""Candidate settings: keyed draws, seed groups, chunks and ids."""
from __future__ import annotations

import pytest

from datagen.config import RenderConfig
from datagen.p2p.attention import attention_steps, shared_steps
from datagen.p2p.specs import chunk, draw_spec, draw_specs, parse_candidate_id


def test_specs_are_a_function_of_run_seed_triple_and_index():
    cfg = RenderConfig(num_candidates=6)
    a, b = draw_specs(0, "t1", cfg), draw_specs(0, "t1", cfg)
    assert a == b
    assert draw_specs(1, "t1", cfg) != a and draw_specs(0, "t2", cfg) != a
    assert draw_spec(0, "t1", 4, cfg) == a[4]                     # any candidate alone
    assert all(0.1 <= s.p <= 0.9 and 7.5 <= s.cfg_scale <= 15 for s in a)
    assert len({s.seed for s in a}) == 6
    assert [s.candidate_id for s in a[:2]] == ["t1_0000", "t1_0001"]


def test_seed_groups_share_seed_and_cfg_and_keep_their_own_p():
    cfg = RenderConfig(num_candidates=6, candidates_per_seed=3)
    specs = draw_specs(0, "t1", cfg)
    assert len({(s.seed, s.cfg_scale) for s in specs[:3]}) == 1
    assert specs[0].seed != specs[3].seed
    assert len({s.p for s in specs[:3]}) == 3
    assert specs[0] == draw_specs(0, "t1", RenderConfig(num_candidates=6))[0]   # the leader is unchanged


def test_chunks_are_consecutive_and_bounded():
    specs = draw_specs(0, "t1", RenderConfig(num_candidates=10))
    chunks = chunk(specs, 4)
    assert [len(c) for c in chunks] == [4, 4, 2] and sum(chunks, []) == specs


def test_candidate_ids_parse_back():
    assert parse_candidate_id("abc_def_0012") == ("abc_def", 12)
    with pytest.raises(ValueError):
        parse_candidate_id("abc_x1")


def test_shared_steps_follow_the_original_threshold():
    # step i shares iff p > i / (steps - 1)
    assert shared_steps(0.5, 5) == 2 and shared_steps(0.51, 5) == 3
    assert shared_steps(0.0, 5) == 0 and shared_steps(1.0, 5) == 4   # the last step never shares
    assert attention_steps("self", 0.5, 5, 0.4, 0.8) == (2, 0)
    assert attention_steps("cross", 0.8, 11, 0.4, 0.8) == (4, 8)     # the P2P pair 0.8 / 0.4
    assert attention_steps("none", 0.9, 5, 0.4, 0.8) == (0, 0)


def test_impossible_ranges_are_refused():
    with pytest.raises(ValueError, match="p_min"):
        RenderConfig(p_min=0.8, p_max=0.2)

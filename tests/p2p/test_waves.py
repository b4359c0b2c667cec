"""Waves: a triple stops once k candidates pass (enough), or after m waves with none near (hopeless)."""
from __future__ import annotations

import pytest

from datagen.config import FilterConfig, PipelineConfig, WavesConfig
from datagen.p2p.loading import load_pipeline
from datagen.p2p.render import CandidateRenderer, RenderCounters
from datagen.p2p.stage import render_shard
from datagen.waves import TripleProgress, after_wave, shortfall

from .conftest import make_triple, render_config

FILTER = FilterConfig(min_sim_0=0.8, min_sim_1=0.8, min_direction=0.2, min_image=0.5)
PASS = {"sim_0": 0.9, "sim_1": 0.9, "sim_direction": 0.3, "sim_image": 0.7}
NEAR = {**PASS, "sim_direction": 0.19}
FAR = {**PASS, "sim_direction": -0.5}
TRIPLES = [make_triple("a red circle on the left", "a blue circle on the left"),
           make_triple("a green square on the right", "a green triangle on the right"),
           make_triple("a small blue square", "a large blue square")]


def test_a_triple_is_enough_once_k_pass_with_margin():
    w = WavesConfig(size=4, k=2, m=2, margin=0.05)
    p = after_wave(TripleProgress(), [PASS, FAR, None, {**PASS, "sim_direction": 0.22}], FILTER, w)
    assert (p.passed, p.state(w, 4)) == (1, "open")           # 0.22 passes, but not by the margin
    p = after_wave(p, [PASS, FAR, FAR, FAR], FILTER, w)
    assert p.state(w, 4) == "enough"


def test_a_triple_is_hopeless_after_m_waves_with_none_near():
    w = WavesConfig(size=4, k=1, m=2, near=0.02)
    p = after_wave(TripleProgress(), [FAR, None, FAR, FAR], FILTER, w)
    assert p.state(w, 4) == "open"
    assert after_wave(p, [FAR] * 4, FILTER, w).state(w, 4) == "hopeless"
    assert after_wave(p, [NEAR, FAR, FAR, FAR], FILTER, w).state(w, 4) == "open"   # within 0.02 of passing


def test_a_triple_far_from_passing_is_hopeless_after_one_wave():
    w = WavesConfig(size=4, k=1, m=3, near=0.02, far=0.1)
    assert shortfall(FAR, FILTER) == pytest.approx(0.7) and shortfall(PASS, FILTER) < 0
    assert after_wave(TripleProgress(), [FAR] * 4, FILTER, w).state(w, 4) == "hopeless"
    without = WavesConfig(size=4, k=1, m=3, near=0.02)
    assert after_wave(TripleProgress(), [FAR] * 4, FILTER, without).state(without, 4) == "open"
    within_far = {**PASS, "sim_direction": 0.15}        # 0.05 short: not near, but not far either
    assert after_wave(TripleProgress(), [within_far, FAR, FAR, FAR], FILTER, w).state(w, 4) == "open"
    # Candidates the previews stopped have no scores: a wave of them is no evidence of anything.
    assert after_wave(TripleProgress(), [None] * 4, FILTER, w).state(w, 4) == "open"
    assert after_wave(TripleProgress(), [None, None, FAR, None], FILTER, w).state(w, 4) == "hopeless"


def test_after_rescue_after_waves_only_triples_about_to_be_lost_go_on():
    w = WavesConfig(size=4, k=4, m=1, near=0.03, rescue_after=2, rescue_near=0.01)
    barely = {**PASS, "sim_direction": 0.195}          # 0.005 short: about to be lost
    short = {**PASS, "sim_direction": 0.18}            # 0.02 short: near, but not within rescue_near
    one_wave = after_wave(TripleProgress(), [short] * 4, FILTER, w)
    assert one_wave.state(w, 4) == "open"              # before rescue_after every rule is as without it
    assert after_wave(one_wave, [short] * 4, FILTER, w).state(w, 4) == "hopeless"
    assert after_wave(one_wave, [barely, short, short, short], FILTER, w).state(w, 4) == "open"
    assert after_wave(one_wave, [PASS, short, short, short], FILTER, w).state(w, 4) == "covered"
    without = w.model_copy(update={"rescue_after": None})
    assert after_wave(one_wave, [short] * 4, FILTER, without).state(without, 4) == "open"
    rescued = after_wave(after_wave(one_wave, [barely] * 4, FILTER, w), [PASS, FAR, FAR, FAR], FILTER, w)
    assert rescued.state(w, 4) == "covered"


def test_rescue_near_must_not_exceed_near():
    with pytest.raises(ValueError, match="rescue_near"):
        WavesConfig(near=0.02, rescue_after=3, rescue_near=0.05)


def test_far_must_exceed_near():
    with pytest.raises(ValueError, match="far"):
        WavesConfig(near=0.05, far=0.05)


def test_a_triple_that_never_decides_renders_every_wave():
    w = WavesConfig(size=4, k=1, m=1)
    p = TripleProgress()
    for _ in range(3):
        p = after_wave(p, [NEAR] * 4, FILTER, w)
    assert (p.candidates, p.state(w, 3)) == (12, "done")


@pytest.fixture(scope="module")
def renderer(tiny_sd_dir):
    return CandidateRenderer(load_pipeline(str(tiny_sd_dir)), render_config(tiny_sd_dir))


def render_in_waves(renderer, tiny_sd_dir, scores_of, **waves):
    cfg = PipelineConfig(seed=3, filter=FILTER,
                         render=render_config(tiny_sd_dir, num_candidates=12, steps=2, waves=WavesConfig(**waves),
                                              resources={"batch_size": 4, "num_cpus": 1}))
    renderer.cfg = cfg.render
    counters, progress, started = RenderCounters(), {}, []
    for rendered in render_shard(renderer, cfg, TRIPLES, counters,
                                 lambda chunk: {r.candidate.candidate_id: scores_of(r.candidate) for r in chunk},
                                 progress):
        started += [r.candidate for r in rendered]
    return started, counters, progress


def test_waves_stop_each_triple_at_k(renderer, tiny_sd_dir):
    # Every candidate passes: each triple renders its first wave only.
    started, counters, progress = render_in_waves(renderer, tiny_sd_dir, lambda c: PASS, size=4, k=2, m=2)
    assert sorted(c.index for c in started) == sorted(list(range(4)) * 3)
    assert {p.state(WavesConfig(size=4, k=2), 3) for p in progress.values()} == {"enough"}
    assert counters.skipped == 3 * 8 and counters.unet_rows_saved_waves == 3 * 8 * 4 * 2


def test_hopeless_triples_stop_at_m(renderer, tiny_sd_dir):
    # The first triple is hopeless, the others near but never passing: they render all 3 waves.
    hopeless = TRIPLES[0].triple_id
    started, counters, _ = render_in_waves(renderer, tiny_sd_dir,
                                           lambda c: FAR if c.triple_id == hopeless else NEAR, size=4, k=1, m=2)
    per_triple = {t.triple_id: sorted(c.index for c in started if c.triple_id == t.triple_id) for t in TRIPLES}
    assert per_triple[hopeless] == list(range(8))
    assert all(per_triple[t.triple_id] == list(range(12)) for t in TRIPLES[1:])
    assert counters.skipped == 4


def test_far_triples_stop_after_one_wave(renderer, tiny_sd_dir):
    far = TRIPLES[0].triple_id
    started, counters, progress = render_in_waves(renderer, tiny_sd_dir,
                                                  lambda c: FAR if c.triple_id == far else NEAR,
                                                  size=4, k=1, m=2, far=0.1)
    assert sorted(c.index for c in started if c.triple_id == far) == list(range(4))
    assert progress[far].state(WavesConfig(size=4, k=1, m=2, far=0.1), 3) == "hopeless"
    assert counters.skipped == 8


def test_only_triples_about_to_be_lost_render_past_rescue_after(renderer, tiny_sd_dir):
    # One triple passes 3 of 4 in its first wave (covered, k is 4), one comes within 0.005 (rescued), one 0.02 short.
    covered, rescued, short = (t.triple_id for t in TRIPLES)
    scores = {covered: PASS, rescued: {**PASS, "sim_direction": 0.195}, short: {**PASS, "sim_direction": 0.18}}
    started, counters, progress = render_in_waves(
        renderer, tiny_sd_dir, lambda c: scores[c.triple_id] if c.index != 1 or c.triple_id != covered else FAR,
        size=4, k=4, m=1, near=0.03, rescue_after=1, rescue_near=0.01)
    per_triple = {t: sorted(c.index for c in started if c.triple_id == t) for t in scores}
    assert per_triple == {covered: list(range(4)), rescued: list(range(12)), short: list(range(4))}
    w = WavesConfig(size=4, k=4, m=1, near=0.03, rescue_after=1, rescue_near=0.01)
    assert [progress[t].state(w, 3) for t in scores] == ["covered", "done", "hopeless"]
    assert counters.skipped == 16


def test_a_wave_renders_in_chunks_of_the_open_triples(renderer, tiny_sd_dir):
    # Wave 2 holds only the 2 open triples: chunks of batch_size 4 never mix waves.
    started, _, _ = render_in_waves(renderer, tiny_sd_dir,
                                    lambda c: FAR if c.triple_id == TRIPLES[0].triple_id else NEAR, size=4, k=1, m=2)
    waves = [c.index // 4 for c in started]
    assert waves == sorted(waves)


def test_waves_need_scores_as_they_render(renderer, tiny_sd_dir):
    cfg = PipelineConfig(render=render_config(tiny_sd_dir, waves=WavesConfig()))
    with pytest.raises(ValueError, match="score inline"):
        next(render_shard(renderer, cfg, TRIPLES, RenderCounters()))

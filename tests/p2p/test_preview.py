"""Previews (x0 prediction part-way, scored with the CLIP metrics) and the stop rule they feed."""
from __future__ import annotations

import math

import numpy as np
import pytest

from datagen.config import PreviewConfig
from datagen.p2p.stage import PREVIEW_RULE_FILE, STAGE, Worker, render_one
from datagen.preview_rule import FEATURES, PreviewRule, save_rule

from .conftest import make_run, make_triple

TRIPLES = [make_triple("a red circle on the left", "a blue circle on the left"),
           make_triple("a green square on the right", "a green triangle on the right")]
PREVIEW_COLUMNS = [f"preview_{m}" for m in FEATURES]


@pytest.fixture(scope="module")
def clip_score(tiny_clip_dir):
    from datagen.clip.loading import load_clip
    from datagen.filter.scorer import ClipScorer

    return ClipScorer(load_clip(f"local-dir:{tiny_clip_dir}", "", "cpu", "fp32")).score


def stop_half_rule(steps: int, median: float) -> PreviewRule:
    """A rule that stops the candidates whose preview sim_direction is below the median."""
    return PreviewRule(kind="threshold", target_recall=1.0, fraction=0.4, steps=steps,
                       bounds={"sim_0": -1.0, "sim_1": -1.0, "sim_image": -1.0, "sim_direction": median})


@pytest.fixture(scope="module")
def free_run(tmp_path_factory, tiny_sd_dir, clip_score):
    """The shard rendered with previews and no rule, and the median of its previews' sim_direction."""
    tmp = tmp_path_factory.mktemp("free")
    _, store, stats = run_with_previews(tmp, tiny_sd_dir, clip_score, None)
    rows = store.read_table(STAGE, 0)
    return rows, stats, float(np.median([r["preview_sim_direction"] for r in rows]))


def run_with_previews(tmp_path, tiny_sd_dir, clip_score, rule: PreviewRule | None):
    rule_path = ""
    if rule is not None:
        rule_path = str(save_rule(rule, tmp_path / "calibrated" / "rule.json"))
    (tmp_path / "run").mkdir(parents=True)
    cfg, store = make_run(tmp_path / "run", tiny_sd_dir, [TRIPLES], num_candidates=6, steps=5,
                          preview=PreviewConfig(fraction=0.4, rule=rule_path),
                          resources={"batch_size": 4, "num_cpus": 1})
    stats = Worker(cfg, str(tmp_path / "run"), clip_score).process_shard(0)
    return cfg, store, stats


def test_every_candidate_gets_a_preview_and_nothing_stops_without_a_rule(free_run):
    rows, stats, _ = free_run
    assert all(r["status"] == "ok" for r in rows)
    assert all(math.isfinite(r[c]) for r in rows for c in PREVIEW_COLUMNS)
    assert stats.extra["previewed"] == len(rows) == 12
    assert stats.extra["stopped"] == 0 and stats.extra["unet_rows_saved_preview"] == 0


def test_the_rule_stops_candidates_mid_denoising_and_saves_their_rows(tmp_path, tiny_sd_dir, clip_score, free_run):
    free_rows, free, median = free_run
    _, store, stats = run_with_previews(tmp_path, tiny_sd_dir, clip_score, stop_half_rule(5, median))
    rows = store.read_table(STAGE, 0)
    # Up to the preview nothing differs from the run without a rule.
    assert [r["preview_sim_direction"] for r in rows] == [r["preview_sim_direction"] for r in free_rows]
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert stopped and all(r["preview_sim_direction"] < median for r in stopped)
    assert all(r["preview_sim_direction"] >= median for r in rows if r["status"] == "ok")
    assert stopped[0]["failure_reason"].startswith("stopped_by_preview")
    assert stats.extra["stopped"] == len(stopped)
    assert 0 < stats.extra["unet_rows_saved_preview"]
    assert stats.extra["unet_rows"] < free.extra["unet_rows"]
    assert store.read_tar(STAGE, 0).keys() == {r["candidate_id"] for r in rows if r["status"] == "ok"}


def test_previews_and_images_reproduce_exactly_from_a_candidate_id(tmp_path, tiny_sd_dir, clip_score, free_run):
    _, store, _ = run_with_previews(tmp_path, tiny_sd_dir, clip_score, stop_half_rule(5, free_run[2]))
    rows = store.read_table(STAGE, 0)
    tar = store.read_tar(STAGE, 0)
    for status in ("ok", "stopped"):
        row = next((r for r in rows if r["status"] == status), None)
        assert row is not None, [(r["status"], r["preview_sim_direction"]) for r in rows]
        _, again = render_one(tmp_path / "run", row["candidate_id"], preview_scorer=clip_score)
        assert again.candidate.status == status
        assert [getattr(again.candidate, c) for c in PREVIEW_COLUMNS] == [row[c] for c in PREVIEW_COLUMNS]
        assert set(again.preview_images) == {"preview_input.png", "preview_edited.png"}
        if status == "ok":
            assert all(tar[row["candidate_id"]][name] == data for name, data in again.images.items())


def test_the_run_keeps_the_rule_it_rendered_with(tmp_path, tiny_sd_dir, clip_score):
    rule = stop_half_rule(5, 0.0)
    run_with_previews(tmp_path, tiny_sd_dir, clip_score, rule)
    assert (tmp_path / "run" / PREVIEW_RULE_FILE).is_file()
    # The calibrated file changes afterwards: the run refuses to mix rules.
    changed = stop_half_rule(5, 0.5)
    save_rule(changed, tmp_path / "calibrated" / "rule.json")
    with pytest.raises(ValueError, match="differs from the rule this run rendered with"):
        render_one(tmp_path / "run", TRIPLES[0].triple_id + "_0000", preview_scorer=clip_score)


def test_a_rule_calibrated_at_other_steps_is_refused(tmp_path, tiny_sd_dir, clip_score):
    with pytest.raises(ValueError, match="calibrated on previews at fraction 0.4 of 15 steps"):
        run_with_previews(tmp_path, tiny_sd_dir, clip_score, stop_half_rule(15, 0.0))


def test_previews_need_a_scorer(tmp_path, tiny_sd_dir):
    cfg, _ = make_run(tmp_path, tiny_sd_dir, [TRIPLES], preview=PreviewConfig())
    with pytest.raises(ValueError, match="no CLIP scorer"):
        Worker(cfg, str(tmp_path))


def tiny_decoder(path, latent_channels: int = 4):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(latent_channels=latent_channels, encoder_block_out_channels=(8, 8),
                    decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)
                    ).save_pretrained(path)
    return str(path)


def test_previews_can_be_decoded_by_a_tiny_autoencoder(tmp_path, tiny_sd_dir, clip_score):
    decoder = tiny_decoder(tmp_path / "taesd")
    (tmp_path / "run").mkdir()
    cfg, store = make_run(tmp_path / "run", tiny_sd_dir, [TRIPLES[:1]], num_candidates=2, steps=3,
                          preview=PreviewConfig(fraction=0.4, decoder=decoder))
    stats = Worker(cfg, str(tmp_path / "run"), clip_score).process_shard(0)
    assert stats.extra["previewed"] == 2
    assert all(r["preview_sim_0"] is not None for r in store.read_table(STAGE, 0))


def test_a_tiny_autoencoder_for_other_latents_is_refused(tmp_path, tiny_sd_dir, clip_score):
    decoder = tiny_decoder(tmp_path / "taesd", latent_channels=8)
    cfg, _ = make_run(tmp_path, tiny_sd_dir, [TRIPLES], preview=PreviewConfig(decoder=decoder))
    with pytest.raises(ValueError, match="8-channel latents"):
        Worker(cfg, str(tmp_path), clip_score)

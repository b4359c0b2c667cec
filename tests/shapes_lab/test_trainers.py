"""The shapes trainers on the tiny `test` preset, publishing into a temporary weights folder."""
import json

import pytest
import torch
from safetensors.torch import load_file

from shapes_lab import train


@pytest.fixture
def weights(tmp_path, monkeypatch, one_thread):
    """Point the trainers' publishing at a temporary folder: the shipped weights stay untouched."""
    shipped = tmp_path / "weights"
    monkeypatch.setattr(train, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(train, "SHIPPED_T2I", shipped / "t2i")
    monkeypatch.setattr(train, "SHIPPED_CLIP", shipped / "clip")
    return shipped


def _vae_tensors(folder):
    return load_file(folder / "t2i" / "vae" / "diffusion_pytorch_model.safetensors")


def test_vae_training_is_reproducible_from_its_seed(weights, tmp_path):
    train.train_vae(steps=3, batch_size=4, work=tmp_path / "a", eval_every=100, preset="test")
    first = _vae_tensors(weights)
    (weights / "t2i" / "vae" / "train_state.json").unlink()   # else the second run resumes from it
    train.train_vae(steps=3, batch_size=4, work=tmp_path / "b", eval_every=100, preset="test")
    second = _vae_tensors(weights)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    log = [json.loads(line) for line in (weights / "vae.log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [3, 3] and "rec_all" in log[0]


def test_decoder_only_fine_tuning_keeps_the_encoder_and_resumes_from_the_published_vae(weights, tmp_path):
    train.train_vae(steps=3, batch_size=4, work=tmp_path / "w", eval_every=100, preset="test")
    before = _vae_tensors(weights)
    train.train_vae(steps=6, batch_size=4, lr=1e-2, work=tmp_path / "w", eval_every=100, preset="test",
                    decoder_only=True)
    after = _vae_tensors(weights)
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder
    assert all(torch.equal(before[k], after[k]) for k in encoder)          # latents stay valid
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    state = json.loads((weights / "t2i" / "vae" / "train_state.json").read_text())
    assert state["step"] == 6                                               # continued from step 3
    assert "_name_or_path" not in json.loads((weights / "t2i" / "vae" / "config.json").read_text())


def test_decoder_only_fine_tuning_keeps_the_latent_scale_the_unet_learnt(weights, tmp_path):
    """The T2I trainer registers its latent scale in the shipped VAE config; a decoder-only run,
    resumed from the published VAE or from its own state, must publish that scale unchanged."""
    train.train_vae(steps=2, batch_size=4, work=tmp_path / "w", eval_every=100, preset="test")
    config_path = weights / "t2i" / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["scaling_factor"] = 0.6004
    config_path.write_text(json.dumps(config))
    train.train_vae(steps=3, batch_size=4, work=tmp_path / "w", eval_every=100, preset="test", decoder_only=True)
    assert json.loads(config_path.read_text())["scaling_factor"] == 0.6004     # resumed from the published VAE
    train.train_vae(steps=4, batch_size=4, work=tmp_path / "w", eval_every=100, preset="test", decoder_only=True)
    assert json.loads((weights / "t2i" / "vae" / "train_state.json").read_text())["step"] == 4
    assert json.loads(config_path.read_text())["scaling_factor"] == 0.6004     # resumed from its own state


def test_decoder_only_without_a_trained_vae_says_what_is_missing(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="decoder-only"):
        train.train_vae(steps=2, work=tmp_path / "none", preset="test", decoder_only=True)


def test_unet_training_over_the_published_vae_ships_no_machine_paths(weights, tmp_path):
    train.train_clip(steps=2, batch_size=8, work=tmp_path / "clip-run", eval_every=100, preset="test")
    train.train_vae(steps=2, batch_size=4, work=tmp_path / "vae-run", eval_every=100, preset="test")
    # A fresh work folder: the UNet trainer loads the VAE from the published folder (from_pretrained
    # records where it came from) and must not ship that path in the pipeline it publishes.
    train.train_unet(steps=2, batch_size=4, work=tmp_path / "unet-run", eval_every=100, preset="test",
                     num_scenes=16)
    configs = [weights / "t2i" / "model_index.json", *(weights / "t2i").rglob("config.json")]
    assert len(configs) >= 4
    for config in configs:
        assert "_name_or_path" not in json.loads(config.read_text()), config
    assert json.loads((weights / "t2i" / "train_state.json").read_text())["step"] == 2
    # Every trainer logs into the weights folder it publishes to (a regression: the VAE's log once
    # went to the real shipped folder whatever the tests pointed it at).
    assert all((weights / f"{name}.log.jsonl").exists() for name in ("clip", "vae", "t2i"))


def test_a_candidate_leaves_the_shipped_weights_alone_and_a_fresh_machine_resumes_from_it(weights, tmp_path, caplog):
    import logging

    train.train_clip(steps=2, batch_size=8, work=tmp_path / "clip-run", eval_every=100, preset="test")
    shipped = load_file(weights / "clip" / "open_clip_model.safetensors")
    shipped_log = (weights / "clip.log.jsonl").read_text()
    candidate = tmp_path / "candidate"
    train.train_clip(steps=4, batch_size=8, work=tmp_path / "fine-tune", eval_every=100, preset="test",
                     out=candidate, image_only=True)
    assert all(torch.equal(v, load_file(weights / "clip" / "open_clip_model.safetensors")[k]) for k, v in shipped.items())
    assert (weights / "clip.log.jsonl").read_text() == shipped_log
    tuned = load_file(candidate / "open_clip_model.safetensors")
    # The image tower alone moved: the text tower, the T2I's frozen text encoder, is exactly as shipped.
    assert all(torch.equal(v, tuned[k]) for k, v in shipped.items() if not k.startswith("visual."))
    assert any(not torch.equal(v, tuned[k]) for k, v in shipped.items() if k.startswith("visual."))
    assert json.loads((candidate / "train_state.json").read_text())["step"] == 4
    assert (candidate / "clip.log.jsonl").exists()
    with caplog.at_level(logging.INFO, logger="shapes_lab.train"):   # runs/ gone: a fresh work folder
        train.train_clip(steps=5, batch_size=8, work=tmp_path / "next-session", eval_every=100, preset="test",
                         out=candidate, image_only=True)
    assert f"resumed from the fp16 weights in {candidate} at step 4" in caplog.text
    assert json.loads((candidate / "train_state.json").read_text())["step"] == 5


def test_unnamed_spread_reads_the_offsets_a_t2i_draws():
    # Renders are drawn exactly: their parsed offsets spread as the scenes' do. Objects set at their
    # slots' centres (what a T2I that ignores world 2 draws) match the same captions and spread none.
    from dataclasses import replace

    from datagen.shapes import data, oracle, world
    scenes = data.scene_batch(7, 48)
    spread = train.unnamed_spread([oracle.parse_image(world.render(s, 64)) for s in scenes], scenes)
    assert spread["x_offset_std_renders"] > 1.0
    assert spread["x_offset_std"] == pytest.approx(spread["x_offset_std_renders"], abs=0.01)
    centred = [replace(s, objects=tuple(replace(o, x_offset=0) for o in s.objects)) for s in scenes]
    centred_spread = train.unnamed_spread([oracle.parse_image(world.render(s, 64)) for s in centred], scenes)
    assert centred_spread["x_offset_std"] == 0.0

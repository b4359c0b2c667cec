"""Dual-guidance sampling (model/editor/sampling.py) and the editor factory (model/editor/loading.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.editor.images import fit_for_edit
from model.editor.loading import Editor, EditorLoadError, load_editor
from model.editor.sampling import EditSettings, dual_guidance, edit_images, sample_edits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def editor(tiny_editor_dir) -> Editor:
    return load_editor(str(tiny_editor_dir), device="cpu")


def noise_image(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    arr = (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def test_dual_guidance_equals_the_expanded_formula():
    g = torch.Generator().manual_seed(0)
    e_ti, e_i, e_n = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    for s_t, s_i in [(7.5, 1.5), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0), (12.0, 2.2)]:
        # The same thing written as weights on the three predictions.
        direct = (1 - s_i) * e_n + (s_i - s_t) * e_i + s_t * e_ti
        torch.testing.assert_close(dual_guidance(e_ti, e_i, e_n, s_t, s_i), direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dual_guidance(e_ti, e_i, e_n, 1.0, 1.0), e_ti)   # no guidance at all
    torch.testing.assert_close(dual_guidance(e_ti, e_i, e_n, 0.0, 1.0), e_i)    # image only
    torch.testing.assert_close(dual_guidance(e_ti, e_i, e_n, 0.0, 0.0), e_n)    # neither


def test_batched_pass_guides_with_the_three_conditions_in_order(editor, monkeypatch):
    """The one batched UNet pass gives the same guided noise as three separate passes with
    (text, image), (null text, image) and (null text, zero image)."""
    import model.editor.sampling as sampling

    seen = {}
    real_guidance = sampling.dual_guidance

    def spy(e_ti, e_i, e_n, s_t, s_i):
        out = real_guidance(e_ti, e_i, e_n, s_t, s_i)
        seen.setdefault("guided", out.clone())
        return out

    calls = []
    real_unet = editor.unet

    class RecordingUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = real_unet

        @property
        def config(self):
            return real_unet.config

        def forward(self, x, t, **kw):
            calls.append((x.clone(), t))
            return real_unet(x, t, **kw)

    monkeypatch.setattr(sampling, "dual_guidance", spy)
    monkeypatch.setattr(editor, "unet", RecordingUNet())
    image = noise_image(32, 32, seed=1)
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    sample_edits(editor, pixels, ["turn it blue"], EditSettings(steps=1, text_guidance=5.0, image_guidance=1.7), [3])

    x, t = calls[0]
    latent = x[:1, :4]  # the scaled noisy latent (the same in all three rows)
    def predict(embeds, img_latent):
        return real_unet(torch.cat([latent, img_latent], 1), t, encoder_hidden_states=embeds).sample

    with torch.no_grad():
        image_latent = editor.vae.encode(pixels).latent_dist.mode()
        text, null = editor.encode_instructions(["turn it blue"]), editor.encode_instructions([""])
        e_ti = predict(text, image_latent)
        e_i = predict(null, image_latent)
        e_n = predict(null, torch.zeros_like(image_latent))
    expected = e_n + 5.0 * (e_ti - e_i) + 1.7 * (e_i - e_n)
    torch.testing.assert_close(seen["guided"], expected, rtol=1e-4, atol=1e-5)


def test_sampler_equals_the_diffusers_pipeline(tiny_editor_dir, editor):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(tiny_editor_dir), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    images = [noise_image(32, 24, seed=2), noise_image(32, 24, seed=3)]
    prompts = ["make it red", "add a hat"]
    settings = EditSettings(steps=6, text_guidance=6.0, image_guidance=1.3)
    ours = edit_images(editor, images, prompts, settings, seeds=[11, 12])
    ref = pipe(prompt=prompts, image=images, num_inference_steps=6, guidance_scale=6.0, image_guidance_scale=1.3,
               generator=[torch.Generator().manual_seed(s) for s in (11, 12)], output_type="np").images
    ref = (ref * 255).round().astype(np.int16)
    for got, want in zip(ours, ref):
        assert np.abs(np.asarray(got, np.int16) - want).max() <= 1


def test_an_edit_depends_on_its_seed_not_on_its_batch_mates(editor):
    image, other = noise_image(32, 32, seed=4), noise_image(32, 32, seed=5)
    s = EditSettings(steps=3)
    alone = edit_images(editor, [image], "make it red", s, seeds=[7])[0]
    batched = edit_images(editor, [other, image, other], "make it red", s, seeds=[1, 7, 2])
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(batched[1], np.int16)).max() <= 1
    assert not np.array_equal(np.asarray(batched[0]), np.asarray(batched[2]))  # different seeds differ


def test_results_have_their_inputs_sizes_whatever_the_mode(editor):
    images = [noise_image(50, 30), noise_image(7, 9, mode="RGBA"), noise_image(1, 1, mode="L"),
              noise_image(40, 40, mode="CMYK")]
    out = edit_images(editor, images, ["a", "b", "c", "d"], EditSettings(steps=2, batch_size=2))
    assert [im.size for im in out] == [im.size for im in images]
    assert all(im.mode == "RGB" for im in out)


def test_any_diffusers_scheduler_by_name(editor):
    image = noise_image(32, 32)
    euler = edit_images(editor, [image], "x", EditSettings(steps=3, seed=1))[0]
    ddim = edit_images(editor, [image], "x", EditSettings(steps=3, seed=1, scheduler="DDIMScheduler"))[0]
    assert not np.array_equal(np.asarray(euler), np.asarray(ddim))
    with pytest.raises(ValueError, match="unknown scheduler 'NoSuchScheduler'"):
        edit_images(editor, [image], "x", EditSettings(steps=1, scheduler="NoSuchScheduler"))


def test_an_in_memory_pipeline_is_accepted_as_an_editor(editor):
    from tests.model.conftest import build_tiny_editor_pipeline

    pipe = build_tiny_editor_pipeline(seed=0)
    image = noise_image(32, 32)
    s = EditSettings(steps=2, seed=3)
    a = edit_images(pipe, [image], "x", s)[0]
    b = edit_images(editor, [image], "x", s)[0]
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        EditSettings(steps=0)
    with pytest.raises(ValueError, match="guidance scales must be >= 0"):
        EditSettings(image_guidance=-1)


def test_loading_names_what_is_wrong(tiny_sd_dir, tmp_path, monkeypatch):
    import datagen.shapes.models as models

    monkeypatch.setattr(models, "SHIPPED_EDITOR", tmp_path / "no-editor-here")
    with pytest.raises(EditorLoadError, match="shipped shapes editor model is missing"):
        load_editor("shapes", device="cpu")
    with pytest.raises(EditorLoadError, match="not an InstructPix2Pix editor: its UNet takes 4 input channels"):
        load_editor(str(tiny_sd_dir), device="cpu")
    with pytest.raises(EditorLoadError, match="no such model directory"):
        load_editor(str(tmp_path / "missing-dir"), device="cpu")


def test_the_model_fixes_edit_size_and_native_resolution(editor):
    assert editor.native_resolution == 32 and editor.size_multiple == 4
    assert fit_for_edit(noise_image(64, 48), 32, 4).size == (32, 24)

"""The tiny models are built offline and load through the same loaders as SD v1.5 / ViT-L-14."""
import open_clip
import torch

from datagen.shapes import models


def test_tokenizer_gives_openai_clip_ids():
    tok = models.build_tokenizer(40)
    ref = open_clip.SimpleTokenizer(context_length=40)
    for text in ["a small red circle on the left, white background", "Make it look like a Van Gogh painting!"]:
        ids = tok(text).input_ids
        assert ids == ref(text)[0][: len(ids)].tolist()


def test_open_clip_text_tower_converts_exactly_to_transformers():
    model, preset = models.build_clip("test", seed=1)
    hf = models.openclip_text_to_hf(model, preset)
    ids = open_clip.SimpleTokenizer(context_length=preset.context_length)(["a red circle", "two blue squares, gray"])
    with torch.no_grad():
        ref = model.encode_text(ids)
        hidden = hf(ids).last_hidden_state
        ours = hidden[torch.arange(2), ids.argmax(-1)] @ model.text_projection
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_tiny_sd_loads_with_the_standard_diffusers_call(tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    out = pipe("a small red circle on the left, white background", num_inference_steps=2, height=32, width=32,
               output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 32, 32, 3)


def test_tiny_clip_loads_with_open_clip_local_dir(tiny_clip_dir):
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_clip_dir}")
    from PIL import Image

    with torch.no_grad():
        img = model.encode_image(preprocess(Image.new("RGB", (64, 64), "red"))[None])
        txt = model.encode_text(tokenizer(["a red square"]))
    assert img.shape == txt.shape == (1, models.CLIP_PRESETS["test"].embed_dim)


def test_resolve_model_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "SHIPPED_EDITOR", tmp_path / "nope")
    import pytest

    with pytest.raises(FileNotFoundError, match="publish-editor"):
        models.resolve_model("shapes", "editor")
    assert models.resolve_model("org/some-model") == "org/some-model"

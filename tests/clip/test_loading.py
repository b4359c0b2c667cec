"""The CLIP factory: every accepted name form loads; every bad one fails with a clear error."""
from __future__ import annotations

import shutil

import pytest

from datagen.clip.loading import ClipLoadError, check_clip_source, load_clip, resolve_clip_name


def test_local_dir_plain_dir_and_weights_file_load_the_same_model(tiny_clip_dir):
    a = load_clip(f"local-dir:{tiny_clip_dir}", device="cpu")
    b = load_clip(str(tiny_clip_dir), device="cpu")
    c = load_clip(str(tiny_clip_dir / "open_clip_model.safetensors"), device="cpu")
    assert a.image_size == (32, 32) and a.mean == (0.5, 0.5, 0.5)
    for other in (b, c):
        for (k, v), (k2, v2) in zip(a.model.state_dict().items(), other.model.state_dict().items()):
            assert k == k2 and (v == v2).all()


def test_shapes_name_resolves_to_the_shipped_folder(tiny_clip_dir, monkeypatch):
    import datagen.shapes.models as models

    monkeypatch.setattr(models, "SHIPPED_CLIP", tiny_clip_dir)
    assert resolve_clip_name("shapes") == (f"local-dir:{tiny_clip_dir}", None)
    assert load_clip("shapes", device="cpu").image_size == (32, 32)
    monkeypatch.setattr(models, "SHIPPED_CLIP", tiny_clip_dir / "missing")
    with pytest.raises(ClipLoadError, match="shipped shapes clip model is missing"):
        load_clip("shapes")


def test_builtin_name_keeps_its_pretrained_tag_and_schemas_drop_it():
    assert resolve_clip_name("ViT-L-14", "openai") == ("ViT-L-14", "openai")
    assert resolve_clip_name("hf-hub:org/repo", "openai") == ("hf-hub:org/repo", None)


@pytest.mark.parametrize("name, pretrained, message", [
    ("local-dir:/nonexistent/clip", "", "does not exist"),
    ("ViT-Nope-99", "openai", "not an open_clip built-in model name"),
    ("ViT-B-32", "no-such-tag", "neither a known tag"),
    ("", "", "no CLIP model configured"),
])
def test_bad_sources_fail_the_cheap_check_with_a_clear_message(name, pretrained, message):
    with pytest.raises(ClipLoadError, match=message):
        check_clip_source(name, pretrained)


def test_folder_without_config_or_weights_is_named(tiny_clip_dir, tmp_path):
    no_config = tmp_path / "a"
    no_config.mkdir()
    with pytest.raises(ClipLoadError, match="open_clip_config.json is missing"):
        check_clip_source(f"local-dir:{no_config}")
    no_weights = tmp_path / "b"
    no_weights.mkdir()
    shutil.copy(tiny_clip_dir / "open_clip_config.json", no_weights)
    with pytest.raises(ClipLoadError, match="no weights"):
        check_clip_source(f"local-dir:{no_weights}")


def test_corrupt_weights_raise_clip_load_error_naming_the_model(tiny_clip_dir, tmp_path):
    bad = tmp_path / "bad-clip"
    shutil.copytree(tiny_clip_dir, bad)
    (bad / "open_clip_model.safetensors").write_bytes(b"not a safetensors file")
    check_clip_source(f"local-dir:{bad}")  # looks fine from outside...
    with pytest.raises(ClipLoadError, match=r"could not load CLIP 'local-dir:.*bad-clip'"):
        load_clip(f"local-dir:{bad}", device="cpu")   # ...but loading says what went wrong


def test_cuda_requested_without_a_gpu_is_a_clear_error(tiny_clip_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(ClipLoadError, match="no GPU is visible"):
        load_clip(f"local-dir:{tiny_clip_dir}", device="cuda")

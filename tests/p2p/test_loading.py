"""The pipeline factory: real diffusers loading, clear errors for bad checkpoints and settings."""
from __future__ import annotations

import pytest
import torch

from datagen.p2p.loading import CheckpointError, load_pipeline, select_dtype
from datagen.schedulers import make_scheduler


def test_local_directory_loads_in_float32_on_cpu_with_the_named_scheduler(tiny_sd_dir):
    loaded = load_pipeline(str(tiny_sd_dir), "DDIMScheduler", device="cpu")
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert type(loaded.pipe.scheduler).__name__ == "DDIMScheduler"
    assert loaded.pipe.unet.dtype == torch.float32 and not loaded.pipe.unet.training


def test_missing_directory_fails_with_its_name(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        load_pipeline(str(tmp_path / "nowhere" / "sd"))


def test_directory_without_model_index_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no model_index.json"):
        load_pipeline(str(tmp_path))


def test_missing_shipped_shapes_model_names_the_trainer(tmp_path, monkeypatch):
    import datagen.shapes.models as models

    monkeypatch.setattr(models, "SHIPPED_T2I", tmp_path / "absent")
    with pytest.raises(CheckpointError, match="train-t2i"):
        load_pipeline("shapes")


def test_editing_checkpoint_is_refused_as_not_text_to_image(tmp_path):
    from datagen.shapes.models import T2I_PRESETS, build_t2i_pipeline, build_unet

    pipe = build_t2i_pipeline("test")
    pipe.unet = build_unet(T2I_PRESETS["test"], in_channels=8)   # InstructPix2Pix-style 8-channel UNet
    pipe.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="8 input channels"):
        load_pipeline(str(tmp_path))


def test_unknown_scheduler_lists_the_known_ones(loaded, tiny_sd_dir):
    with pytest.raises(ValueError, match="EulerAncestralDiscreteScheduler"):
        make_scheduler("EulerAncestral", loaded.pipe.scheduler.config)
    with pytest.raises(CheckpointError, match="unknown scheduler 'EulerAncestral'; diffusers has: .*EulerAncestralDiscreteScheduler"):
        load_pipeline(str(tiny_sd_dir), scheduler="EulerAncestral")


def test_float16_on_cpu_is_refused():
    with pytest.raises(CheckpointError, match="float16"):
        select_dtype("float16", torch.device("cpu"))
    assert select_dtype("auto", torch.device("cpu")) == torch.float32
    assert select_dtype("auto", torch.device("cuda")) == torch.float16

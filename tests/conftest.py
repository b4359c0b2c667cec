"""Session-wide fixtures: tiny models built offline from configs, and a local Ray.

Packages put their own fixtures in tests/<package>/conftest.py.
"""
from __future__ import annotations

import os

import pytest

# Two cores: keep torch from oversubscribing them when Ray workers run beside the test.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: needs --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One torch thread: tiny models gain nothing from a second one, and on 2 shared, busy
    cores two spin-waiting OpenMP threads run 10-20x slower. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    """A random tiny StableDiffusionPipeline saved as a standard diffusers directory."""
    from datagen.shapes.models import build_t2i_pipeline

    path = tmp_path_factory.mktemp("tiny-sd")
    build_t2i_pipeline("test", seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random tiny open_clip CLIP saved in open_clip's local-dir layout."""
    from datagen.shapes.models import build_clip, save_clip

    path = tmp_path_factory.mktemp("tiny-clip")
    model, preset = build_clip("test", seed=0)
    save_clip(model, preset, path)
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()

"""Fixtures of the Stage-2 tests: the tiny random SD loaded once, small render configs, run folders."""
from __future__ import annotations

import pytest

from datagen.config import PipelineConfig, RenderConfig, Resources
from datagen.records import Triple, stable_id


def render_config(model, **overrides) -> RenderConfig:
    """A render config small enough for 2 shared cores. CFG stays low: the random tiny UNet's
    outputs are large, and float32 differences grow with the guidance scale. Stage 2 alone: every
    image into the render tar (render.store=all); tests/test_run.py covers scoring as rendered."""
    base = dict(model=str(model), mode="self", num_candidates=4, steps=5, cfg_min=1.0, cfg_max=2.0,
                candidates_per_seed=2, image_format="png", store="all",
                resources=Resources(actors=1, num_cpus=1, num_gpus=0, batch_size=8))
    base.update(overrides)
    return RenderConfig(**base)


def make_triple(input_caption: str, output_caption: str, instruction: str = "edit it") -> Triple:
    return Triple(triple_id=stable_id(input_caption, output_caption), input_caption=input_caption,
                  instruction=instruction, output_caption=output_caption, backend="test")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every p2p test runs on one torch thread (tests/conftest.py says why)."""


@pytest.fixture(scope="session")
def loaded(tiny_sd_dir):
    from datagen.p2p.loading import load_pipeline

    return load_pipeline(str(tiny_sd_dir))


def make_run(tmp_path, tiny_sd_dir, shards: list[list[Triple]], **render_overrides):
    """A run folder with config.json and done captions shards, as datagen/run.py leaves them."""
    from datagen.records import ShardStats
    from datagen.store import RunStore

    cfg = PipelineConfig(name="test", seed=7, render=render_config(tiny_sd_dir, **render_overrides))
    (tmp_path / "config.json").write_text(cfg.model_dump_json(indent=1))
    store = RunStore(tmp_path)
    for i, triples in enumerate(shards):
        store.write_table("captions", i, [t.to_row() for t in triples])
        store.write_stats(ShardStats(stage="captions", shard=i, count_in=len(triples), count_out=len(triples)))
    return cfg, store

"""Fixtures of the filter tests: render shards written with RunStore, as Stage 2 writes them.

Candidates are shapes-world renders (so the oracle can judge them): per triple, a correct
pair, an unchanged pair (edited = input) and a wrong pair (edited = another scene), with a
fresh height draw per candidate so every image differs.
"""
from __future__ import annotations

import io
import json
import random

import pytest
from PIL import Image

from datagen.config import load_config
from datagen.records import Candidate, ShardStats, candidate_id, stable_id
from datagen.store import RunStore

KINDS = ("correct", "unchanged", "wrong")


def png_bytes(img: Image.Image, fmt: str = "png") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG" if fmt == "png" else "JPEG", quality=100)
    return buf.getvalue()


def make_candidates(shard: int, triples: int, per_triple: int, seed: int = 0, fmt: str = "png"):
    """[(Candidate, input PIL, edited PIL)] of ``triples`` shapes-world triples."""
    from datagen.shapes import grammar, world

    out = []
    for t in range(triples):
        rng = random.Random(seed * 1000 + shard * 100 + t)
        tri = grammar.sample_triple(rng)
        other = grammar.sample_triple(rng)
        triple_id = stable_id("triple", seed, shard, t)
        for i in range(per_triple):
            kind = KINDS[i % len(KINDS)]
            hseed = rng.randint(0, 10 ** 6)
            img_in = world.render(tri.input_scene, 64, seed=hseed)
            target = {"correct": tri.output_scene, "unchanged": tri.input_scene, "wrong": other.input_scene}[kind]
            img_out = world.render(target, 64, seed=hseed)
            c = Candidate(candidate_id=candidate_id(triple_id, i), triple_id=triple_id, index=i, seed=hseed,
                          p=0.1 + 0.1 * i, cfg_scale=7.5, mode="self", steps=20, model_id="test-sd",
                          input_caption=tri.input_caption, instruction=tri.instruction,
                          output_caption=tri.output_caption, edit_kind=tri.edit_kind, image_format=fmt)
            out.append((c, img_in, img_out))
    return out


def write_render_shard(store: RunStore, shard: int, items, fmt: str = "png", drop_images: dict | None = None,
                       corrupt: set | None = None) -> None:
    """Write render shard ``shard`` as Stage 2 does: parquet of Candidate rows, tar of images, stats."""
    drop_images, corrupt = drop_images or {}, corrupt or set()
    samples = []
    for c, img_in, img_out in items:
        sample = {"__key__": c.candidate_id, "json": json.dumps(c.to_row()).encode()}
        if c.status == "ok":
            for part, img in (("input", img_in), ("edited", img_out)):
                if part in drop_images.get(c.candidate_id, ()):
                    continue
                data = png_bytes(img, fmt)
                sample[f"{part}.{fmt}"] = data[: len(data) // 3] if c.candidate_id in corrupt else data
        samples.append(sample)
    store.write_table("render", shard, [c.to_row() for c, _, _ in items])
    store.write_tar("render", shard, samples)
    store.write_stats(ShardStats(stage="render", shard=shard, count_in=len(items), count_out=len(items)))


def filter_config(clip_dir, **filter_overrides):
    """The shapes pipeline config on the tiny CLIP, on CPU, with small export shards."""
    sets = [f"filter.clip_model=local-dir:{clip_dir}", "filter.clip_pretrained=", "filter.device=cpu",
            "filter.resources.batch_size=16", "filter.resources.num_cpus=1", "export.shard_size=5",
            "export.val_fraction=0.25", "export.test_fraction=0.25"]
    sets += [f"filter.{k}={v}" for k, v in filter_overrides.items()]
    return load_config("shapes", sets)


@pytest.fixture(scope="session")
def shapes_items():
    """Two shards of 3 triples x 6 candidates (rendered once per session)."""
    return {s: make_candidates(s, triples=3, per_triple=6) for s in (0, 1)}


def score_run(root, clip_dir, items_by_shard, **filter_overrides):
    """Write render shards, then run the filter stage in-process (Worker + finalize)."""
    from datagen.filter import stage

    store = RunStore(root)
    cfg = filter_config(clip_dir, **filter_overrides)
    (store.root / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (store.root / "config.json").write_text(cfg.model_dump_json())
    for shard, items in items_by_shard.items():
        write_render_shard(store, shard, items)
    worker = stage.Worker(cfg, str(root))
    for shard in stage.plan_shards(cfg, store):
        worker.process_shard(shard)
    store.write_summary("filter")
    stage.finalize(cfg, store)
    return store, cfg


def _between(values, frac: float) -> float:
    """A threshold strictly between two distinct values, about ``frac`` of the way up."""
    v = sorted(set(round(x, 6) for x in values))
    i = min(max(0, int(frac * (len(v) - 1))), len(v) - 2)
    return (v[i] + v[i + 1]) / 2


@pytest.fixture(scope="session")
def splitting(tiny_clip_dir, shapes_items):
    """Thresholds that split the tiny random CLIP's scores of the fixture's candidates: some
    pass, some fail, some fall outside the keep bound. Derived from the scores themselves, so
    they hold whatever the shapes world renders."""
    from datagen.clip.loading import load_clip
    from datagen.filter.scorer import ClipScorer

    items = [x for s in shapes_items.values() for x in s]
    scores = ClipScorer(load_clip(f"local-dir:{tiny_clip_dir}", device="cpu")).score(
        [c for c, _, _ in items], [(a, b) for _, a, b in items])
    img, direction = [s.sim_image for s in scores], [s.sim_direction for s in scores]
    return dict(min_sim_0=-1, min_sim_1=-1, min_direction=_between(direction, 0.3), min_image=_between(img, 0.4),
                keep_min_sim_0=-1, keep_min_sim_1=-1, keep_min_direction=-1, keep_min_image=_between(img, 0.1))


@pytest.fixture(scope="session")
def scored_run(tmp_path_factory, tiny_clip_dir, shapes_items, splitting):
    """A run scored once per session; tests that change it work on a copy (see ``run_copy``)."""
    root = tmp_path_factory.mktemp("scored-run")
    store, cfg = score_run(root, tiny_clip_dir, shapes_items, **splitting)
    return store, cfg


@pytest.fixture
def run_copy(scored_run, tmp_path):
    import shutil

    store, cfg = scored_run
    shutil.copytree(store.root, tmp_path / "run")
    return RunStore(tmp_path / "run"), cfg

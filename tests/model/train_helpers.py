"""Shared helpers of the training/evaluation tests: tiny shapes-world edit pairs as our export."""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path


def shapes_pairs(n: int, seed: int = 0, size: int = 32):
    """``n`` exact edit pairs of the shapes world: (key, input PNG, edited PNG, metadata)."""
    from datagen.shapes import grammar, world

    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = grammar.sample_triple(rng)
        pngs = []
        for scene in (t.input_scene, t.output_scene):
            buf = io.BytesIO()
            world.render(scene, size=size, seed=i).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        meta = {"triple_id": f"t{seed}x{i:04d}", "input_caption": t.input_caption, "instruction": t.instruction,
                "output_caption": t.output_caption, "edit_kind": t.edit_kind}
        out.append((f"s{seed}x{i:05d}", pngs[0], pngs[1], meta))
    return out


def write_shards(root: str | Path, pairs, num_shards: int = 1, split: str | None = None) -> list[Path]:
    """Write pairs as webdataset tars laid out like the export: <key>.input.png/.edited.png/.json."""
    root = Path(root) / split if split else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(num_shards):
        path = root / f"{split or 'pairs'}-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for key, inp, out, meta in pairs[s::num_shards]:
                for ext, data in (("input.png", inp), ("edited.png", out), ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def tiny_train_overrides(**extra) -> list[str]:
    """--set overrides that make a training run take seconds on the tiny test preset."""
    values = {
        "train.resolution": 32, "train.batch_size": 8, "train.gradient_accumulation_steps": 1,
        "train.learning_rate": 1e-3, "train.max_steps": 20, "train.checkpoint_every": 10,
        "train.ema_decay": 0.99, "train.random_flip": False, "train.num_sample_images": 0,
        "train.log_every": 5, "train.shuffle_buffer": 16,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]

"""Batches of shapes-world renders and captions for the trainers, reproducible from a seed.

Training scenes come from seeds >= 0, held-out scenes from seeds < 0, so evaluation never sees
a training scene (up to chance collisions of identical scenes, which the grammar makes rare).
"""
from __future__ import annotations

import random

import numpy as np
import torch

from . import grammar, world


def scene_batch(seed: int, n: int, min_objects: int = 1, max_objects: int = 3) -> list[world.Scene]:
    rng = random.Random(seed)
    return [world.sample_scene(rng, min_objects, max_objects) for _ in range(n)]


def to_tensor(images) -> torch.Tensor:
    """PIL images -> float tensor (N, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_pil(x: torch.Tensor):
    from PIL import Image

    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def render_batch(scenes: list[world.Scene], size: int = 64, seed: int = 0) -> torch.Tensor:
    return to_tensor([world.render(s, size, seed=seed + i) for i, s in enumerate(scenes)])


def object_mask(scenes: list[world.Scene], size: int = 64) -> torch.Tensor:
    """1 where an object is drawn, 0 on the background: (N, 1, H, W)."""
    masks = []
    for s in scenes:
        s = s if s.is_drawn() else s.with_unnamed(random.Random(0))
        bg = np.asarray(world.render(world.Scene(s.background, ()), size), dtype=np.int16)
        img = np.asarray(world.render(s, size), dtype=np.int16)
        masks.append((np.abs(img - bg).sum(-1) > 0).astype(np.float32))
    return torch.from_numpy(np.stack(masks))[:, None]


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary dilation of (N, 1, H, W) masks."""
    return torch.nn.functional.max_pool2d(mask, 3, stride=1, padding=1)


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary erosion of (N, 1, H, W) masks."""
    return -_dilate(-mask)


def boundary_mask(mask: torch.Tensor) -> torch.Tensor:
    """1 on the pixels either side of an object's outline (dilation minus erosion, 3x3), else 0."""
    return _dilate(mask) - _erode(mask)


def thin_mask(mask: torch.Tensor) -> torch.Tensor:
    """1 on and around the parts of objects thinner than 3 pixels (what a 3x3 opening removes:
    the tips and corners of small shapes), else 0."""
    return _dilate(mask - _dilate(_erode(mask)))


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur and noise, so that models trained on clean renders also read generated images."""
    n = x.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0]) / 4.0
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"),
                                         (k[:, None] * k[None, :]).expand(3, 1, 3, 3).contiguous(), groups=3)
    amount = torch.rand(n, 1, 1, 1, generator=gen)
    x = x + (blurred - x) * amount
    sigma = torch.rand(n, 1, 1, 1, generator=gen) * 0.15
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def captions(scenes: list[world.Scene]) -> list[str]:
    return [grammar.caption(s) for s in scenes]


def hard_negative_captions(scenes: list[world.Scene], seed: int) -> list[str]:
    """One minimally edited caption per scene: the negatives that teach attribute binding."""
    rng = random.Random(seed)
    return [grammar.caption(grammar.apply_edit(s, grammar.sample_edit(s, rng))) for s in scenes]

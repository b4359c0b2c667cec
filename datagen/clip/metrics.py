"""The four CLIP metrics of the InstructPix2Pix filter, as pure functions of feature tensors.

As in InstructPix2Pix (Brooks, Holynski, Efros, CVPR 2023)
(its metrics/clip_similarity.py): features are
L2-normalised first, then
  sim_0 = cos(img_in, txt_in)          sim_1 = cos(img_out, txt_out)
  sim_image = cos(img_in, img_out)     sim_direction = cos(img_out - img_in, txt_out - txt_in)
All inputs are (N, D) rows of raw encoder outputs; outputs are (N,) float32 tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = ("sim_0", "sim_1", "sim_image", "sim_direction")


def normalize(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows in float32 (half-precision features are upcast first)."""
    return F.normalize(features.float(), dim=-1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity; 0 where a row is all zeros (identical images give a zero
    image direction, and F.cosine_similarity's eps makes that 0, not NaN)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def clip_metrics(img_in: torch.Tensor, img_out: torch.Tensor, txt_in: torch.Tensor,
                 txt_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four metrics of N candidates from their (unnormalised) CLIP features."""
    if not (img_in.shape == img_out.shape == txt_in.shape == txt_out.shape):
        raise ValueError(f"feature shapes differ: {tuple(img_in.shape)}, {tuple(img_out.shape)}, "
                         f"{tuple(txt_in.shape)}, {tuple(txt_out.shape)}")
    i0, i1, t0, t1 = (normalize(x) for x in (img_in, img_out, txt_in, txt_out))
    return {
        "sim_0": (i0 * t0).sum(-1),
        "sim_1": (i1 * t1).sum(-1),
        "sim_image": (i0 * i1).sum(-1),
        "sim_direction": cosine(i1 - i0, t1 - t0),
    }

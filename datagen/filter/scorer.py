"""Batched CLIP scoring of candidate pairs: images in, Scores records out.

Both images of a batch of candidates go through the image tower in one call; the text
features of each triple's two captions are computed once and cached (a triple has up to
100 candidates, all with the same captions). Preprocessing is either the original filter's
(batched bicubic squash to the model's size, on the model's device) or the model's own
open_clip transforms.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datagen.clip.loading import LoadedClip
from datagen.clip.metrics import clip_metrics
from datagen.records import Candidate, Scores


def _identical(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()


class ClipScorer:
    def __init__(self, clip: LoadedClip, batch_size: int = 64, preprocess: str = "original",
                 text_cache_size: int = 4096):
        if preprocess not in ("original", "open_clip"):
            raise ValueError(f"preprocess must be 'original' or 'open_clip', got {preprocess!r}")
        self.clip = clip
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.text_cache_size = text_cache_size
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()   # triple_id -> (2, D)
        self._mean = torch.tensor(clip.mean, device=clip.device).view(1, 3, 1, 1)
        self._std = torch.tensor(clip.std, device=clip.device).view(1, 3, 1, 1)

    # --- images -------------------------------------------------------------------------
    def image_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, 3, H, W) model input of ``images`` in the model's dtype and device."""
        if self.preprocess == "open_clip":
            x = torch.stack([self.clip.preprocess(img) for img in images]).to(self.clip.device)
        else:
            x = self._original_preprocess(images)
        return x.to(self.clip.dtype)

    def _original_preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        # The original filter: image in [0, 1] -> F.interpolate(size, bicubic) -> normalise.
        arrays = [np.asarray(img.convert("RGB")) for img in images]
        if len({a.shape for a in arrays}) == 1:
            batch = torch.from_numpy(np.stack(arrays)).to(self.clip.device)
            x = self._resize(batch.permute(0, 3, 1, 2).float() / 255.0)
        else:  # mixed sizes: resize one by one, then stack
            x = torch.cat([self._resize(torch.from_numpy(a).to(self.clip.device).permute(2, 0, 1)[None].float() / 255.0)
                           for a in arrays])
        return (x - self._mean) / self._std

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.clip.image_size:
            return x
        return F.interpolate(x, size=self.clip.image_size, mode="bicubic", align_corners=False)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.clip.model.encode_image(self.image_tensor(images)).float()

    # --- text ---------------------------------------------------------------------------
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.clip.text_features(texts)

    def text_features(self, candidates: Sequence[Candidate]) -> tuple[torch.Tensor, torch.Tensor]:
        """(txt_in, txt_out) rows for ``candidates``, encoding only triples not yet cached."""
        missing: dict[str, Candidate] = {}
        for c in candidates:
            if c.triple_id not in self._text_cache and c.triple_id not in missing:
                missing[c.triple_id] = c
        if missing:
            texts = [t for c in missing.values() for t in (c.input_caption, c.output_caption)]
            feats = self.encode_texts(texts).view(len(missing), 2, -1)
            for triple_id, f in zip(missing, feats):
                self._text_cache[triple_id] = f
        feats = torch.stack([self._text_cache[c.triple_id] for c in candidates])
        for c in candidates:  # most recently used last, so eviction drops finished triples
            self._text_cache.move_to_end(c.triple_id)
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)
        return feats[:, 0], feats[:, 1]

    # --- scores -------------------------------------------------------------------------
    def score(self, candidates: Sequence[Candidate],
              images: Sequence[tuple[Image.Image, Image.Image]]) -> list[Scores]:
        """Scores of each candidate from its (input, edited) images, in order."""
        if len(candidates) != len(images):
            raise ValueError(f"{len(candidates)} candidates but {len(images)} image pairs")
        out: list[Scores] = []
        for start in range(0, len(candidates), self.batch_size):
            cands = candidates[start:start + self.batch_size]
            pairs = images[start:start + self.batch_size]
            feats = self.encode_images([p[0] for p in pairs] + [p[1] for p in pairs])
            img_in, img_out = feats[: len(pairs)], feats[len(pairs):].clone()
            # An unchanged pair must have no image direction. Encoded at two batch positions, the
            # same image can differ by float noise, whose direction is random: sim_direction would
            # be noise (seen up to 0.3) and an unchanged pair could pass the threshold.
            same = [i for i, (a, b) in enumerate(pairs) if _identical(a, b)]
            img_out[same] = img_in[same]
            txt_in, txt_out = self.text_features(cands)
            m = {k: v.cpu().numpy() for k, v in clip_metrics(img_in, img_out, txt_in, txt_out).items()}
            for i, c in enumerate(cands):
                out.append(Scores(candidate_id=c.candidate_id, triple_id=c.triple_id,
                                  sim_0=float(m["sim_0"][i]), sim_1=float(m["sim_1"][i]),
                                  sim_image=float(m["sim_image"][i]), sim_direction=float(m["sim_direction"][i])))
        return out

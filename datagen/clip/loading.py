"""The CLIP factory: one name in the config -> a loaded open_clip model (Stage 3's filter, Stage 4's eval).

Accepted names (the normal open_clip calls do the loading):
  - a built-in open_clip name with a pretrained tag or a checkpoint file  ("ViT-L-14" + "openai")
  - ``hf-hub:org/repo`` and ``local-dir:/path`` (open_clip_config.json + weights)
  - a plain directory in the local-dir layout, or a weights file inside one
  - ``shapes``: the project's shipped tiny CLIP (datagen/shapes/weights/clip)
Every failure is raised as ClipLoadError naming the model and what was wrong.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.bin")
_HELP = ("expected an open_clip model name with a pretrained tag or checkpoint file (e.g. ViT-L-14 + openai), "
         "'hf-hub:org/repo', 'local-dir:/path' (a folder with open_clip_config.json and weights), or 'shapes'")


class ClipLoadError(RuntimeError):
    """The configured CLIP model cannot be found or loaded; the message says why."""


@dataclass
class LoadedClip:
    """An open_clip model ready to score: eval mode, on its device, in its dtype."""

    name: str
    model: Any
    tokenizer: Any
    preprocess: Any               # the model's own torchvision transform (PIL -> tensor)
    device: Any                   # torch.device
    dtype: Any                    # torch dtype of the weights
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def image_features(self, images) -> "torch.Tensor":
        """Image tower features of PIL images through the model's own transforms, float32 on the CPU."""
        import torch

        with torch.no_grad():
            x = torch.stack([self.preprocess(im) for im in images]).to(self.device, self.dtype)
            return self.model.encode_image(x).float().cpu()

    def text_features(self, texts) -> "torch.Tensor":
        """Text tower features, float32 on the model's device."""
        import torch

        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float()


def resolve_clip_name(name: str, pretrained: str = "") -> tuple[str, str | None]:
    """(open_clip model name, pretrained or None) for a config's clip_model / clip_pretrained."""
    if not name:
        raise ClipLoadError(f"no CLIP model configured: {_HELP}")
    if name == "shapes":
        from datagen.shapes.models import resolve_model

        try:
            return "local-dir:" + resolve_model("shapes", "clip"), None
        except FileNotFoundError as e:
            raise ClipLoadError(str(e)) from None
    if name.startswith(("hf-hub:", "local-dir:")):
        return name, None
    path = Path(name)
    if path.is_dir():
        return f"local-dir:{path}", None
    if path.is_file() and path.name in _WEIGHT_FILES:
        return f"local-dir:{path.parent}", None
    return name, (pretrained or None)


def check_clip_source(name: str, pretrained: str = "") -> str:
    """Cheap checks (no weights read) that ``name`` can load; returns the resolved name.

    Run before a stage starts so that a wrong model fails in seconds, not inside Ray.
    """
    import open_clip

    model_name, tag = resolve_clip_name(name, pretrained)
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):])
        if not folder.is_dir():
            raise ClipLoadError(f"CLIP {name!r}: folder {folder} does not exist ({_HELP})")
        config = folder / "open_clip_config.json"
        if not config.is_file():
            raise ClipLoadError(f"CLIP {name!r}: {config} is missing (an open_clip local-dir needs it)")
        try:
            if "model_cfg" not in json.loads(config.read_text()):
                raise ValueError("it has no 'model_cfg'")
        except ValueError as e:
            raise ClipLoadError(f"CLIP {name!r}: {config} is not a valid open_clip config: {e}") from None
        if not any((folder / f).is_file() for f in _WEIGHT_FILES):
            raise ClipLoadError(f"CLIP {name!r}: no weights in {folder} (expected one of {', '.join(_WEIGHT_FILES)})")
    elif not model_name.startswith("hf-hub:"):
        if model_name.replace("/", "-") not in open_clip.list_models():
            raise ClipLoadError(f"CLIP {name!r}: not an open_clip built-in model name ({_HELP})")
        if tag and not Path(tag).is_file() and tag not in open_clip.list_pretrained_tags_by_model(
                model_name.replace("/", "-")):
            raise ClipLoadError(f"CLIP {name!r}: pretrained {tag!r} is neither a known tag of that model "
                                f"nor an existing checkpoint file")
    return model_name


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ClipLoadError("filter.device is 'cuda' but no GPU is visible to this worker "
                            "(set filter.resources.num_gpus >= 1, or filter.device=auto)")
    return torch.device(device)


def load_clip(name: str, pretrained: str = "", device: str = "auto", precision: str = "auto") -> LoadedClip:
    """Load ``name`` with open_clip.create_model_and_transforms + get_tokenizer."""
    import open_clip
    import torch

    model_name, tag = resolve_clip_name(name, pretrained)
    dev = pick_device(device)
    if precision == "auto":
        precision = "fp16" if dev.type == "cuda" else "fp32"
    if tag is None and not model_name.startswith(("local-dir:", "hf-hub:")):
        log.warning("CLIP %s has no pretrained weights: random initialisation, scores are meaningless "
                    "except for benchmarking", model_name)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=tag, precision=precision, device=dev)
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as e:  # missing files, bad config, corrupt weights, offline hub, bad tag
        raise ClipLoadError(f"could not load CLIP {name!r} (pretrained={pretrained!r}): "
                            f"{type(e).__name__}: {e}; {_HELP}") from e
    model.eval().requires_grad_(False)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = (size, size) if isinstance(size, int) else tuple(size)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    # open_clip's low-precision modes convert the matmul weights, not every parameter, so the
    # input dtype follows the precision asked for, not the first parameter found.
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    log.info("CLIP %s loaded on %s (%s), image size %s", name, dev, dtype, size)
    return LoadedClip(name=name, model=model, tokenizer=tokenizer, preprocess=preprocess, device=dev,
                      dtype=dtype, image_size=size, mean=mean, std=std)

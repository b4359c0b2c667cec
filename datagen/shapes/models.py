"""Factories of the tiny models of the shapes world, built offline from explicit configs.

The tiny text-to-image model is a real Stable Diffusion in miniature (AutoencoderKL,
CLIPTextModel, CLIPTokenizer, UNet2DConditionModel) saved as a standard diffusers
StableDiffusionPipeline directory; the tiny CLIP is an open_clip custom model saved in
open_clip's ``local-dir:`` format. Tests build the smallest presets; trainers the shipped ones.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_T2I = SHIPPED_DIR / "t2i"
SHIPPED_CLIP = SHIPPED_DIR / "clip"
SHIPPED_EDITOR = SHIPPED_DIR / "editor"


# ---------------------------------------------------------------------------------------
# Tokenizer: transformers' CLIPTokenizer over the CLIP BPE vocabulary that open_clip ships.
# ---------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    # The byte->unicode table of OpenAI CLIP's BPE (open_clip/tokenizer.py).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_bpe_files(out_dir: str | Path) -> tuple[Path, Path]:
    """Write vocab.json + merges.txt (49408 tokens, OpenAI CLIP's) from open_clip's BPE file."""
    import open_clip.tokenizer as oct

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]  # the slice open_clip's SimpleTokenizer takes
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m.split()) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_path.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def build_tokenizer(model_max_length: int = 77):
    """A transformers CLIPTokenizer identical in ids to OpenAI CLIP's, built offline."""
    from transformers import CLIPTokenizer

    d = _bpe_cache_dir()
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=model_max_length,
                         pad_token="<|endoftext|>")


@lru_cache(maxsize=1)
def _bpe_cache_dir() -> Path:
    import tempfile

    d = Path(tempfile.gettempdir()) / "editsynth-clip-bpe"
    if not (d / "merges.txt").exists():
        write_clip_bpe_files(d)
    return d


# ---------------------------------------------------------------------------------------
# Tiny Stable Diffusion
# ---------------------------------------------------------------------------------------
@dataclass
class T2IPreset:
    image_size: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64)      # 3 blocks: latent factor 4
    vae_mid_attention: bool = False                   # attention at 16x16 costs more than it gives here
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    # Attention only at 1/2 and 1/4 of the latent size: a transformer at 16x16 costs more
    # than the rest of the UNet (measured on these CPUs).
    unet_down: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    unet_up: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    attention_head_dim: int = 8
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4
    context_length: int = 40
    vocab_size: int = 49408


T2I_PRESETS: dict[str, T2IPreset] = {
    "shapes": T2IPreset(),
    # The smallest thing that is still a Stable Diffusion: for unit tests (seconds on CPU).
    "test": T2IPreset(image_size=32, vae_channels=(8, 16), unet_channels=(16, 32),
                      unet_down=("CrossAttnDownBlock2D", "DownBlock2D"),
                      unet_up=("UpBlock2D", "CrossAttnUpBlock2D"),
                      attention_head_dim=4, text_width=32, text_layers=2, text_heads=2,
                      context_length=32),
}


def build_vae(p: T2IPreset):
    from diffusers import AutoencoderKL

    n = len(p.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=p.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=p.vae_channels, layers_per_block=1, norm_num_groups=min(8, p.vae_channels[0]),
        sample_size=p.image_size, mid_block_add_attention=p.vae_mid_attention,
    )


def build_unet(p: T2IPreset, in_channels: int | None = None):
    from diffusers import UNet2DConditionModel

    factor = 2 ** (len(p.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=p.image_size // factor,
        in_channels=in_channels or p.latent_channels, out_channels=p.latent_channels,
        down_block_types=p.unet_down, up_block_types=p.unet_up,
        block_out_channels=p.unet_channels, layers_per_block=p.layers_per_block,
        cross_attention_dim=p.text_width, attention_head_dim=p.attention_head_dim,
        norm_num_groups=min(32, p.unet_channels[0]),
    )


def build_text_encoder(p: T2IPreset):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=p.vocab_size, hidden_size=p.text_width, intermediate_size=4 * p.text_width,
        num_hidden_layers=p.text_layers, num_attention_heads=p.text_heads,
        max_position_embeddings=p.context_length, hidden_act="gelu", projection_dim=p.text_width,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(cfg)


def build_scheduler():
    """Stable Diffusion v1's training schedule (scaled-linear betas, 1000 steps, epsilon)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False,
                         steps_offset=1)


def build_t2i_pipeline(preset: str | T2IPreset = "test", seed: int = 0):
    """A randomly initialised StableDiffusionPipeline of the given preset (offline)."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    p = T2I_PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline(
        vae=build_vae(p), text_encoder=build_text_encoder(p), tokenizer=build_tokenizer(p.context_length),
        unet=build_unet(p), scheduler=EulerAncestralDiscreteScheduler.from_config(build_scheduler().config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------
# Tiny CLIP (open_clip custom config)
# ---------------------------------------------------------------------------------------
@dataclass
class ClipPreset:
    embed_dim: int = 64
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4
    context_length: int = 40
    vocab_size: int = 49408
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def model_cfg(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "patch_size": self.patch_size,
                           "width": self.vision_width, "layers": self.vision_layers,
                           "head_width": self.vision_width // self.vision_heads},
            "text_cfg": {"context_length": self.context_length, "vocab_size": self.vocab_size,
                         "width": self.text_width, "heads": self.text_heads, "layers": self.text_layers},
        }

    def preprocess_cfg(self) -> dict:
        return {"size": [self.image_size, self.image_size], "mean": list(self.mean), "std": list(self.std),
                "interpolation": "bicubic", "resize_mode": "squash"}


CLIP_PRESETS: dict[str, ClipPreset] = {
    "shapes": ClipPreset(),
    "test": ClipPreset(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1,
                       vision_heads=2, text_width=32, text_layers=1, text_heads=2, context_length=32),
}


def build_clip(preset: str | ClipPreset = "test", seed: int = 0):
    """A randomly initialised open_clip CLIP of the preset; returns (model, preset)."""
    import open_clip
    import torch

    p = CLIP_PRESETS[preset] if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    model = open_clip.CLIP(**p.model_cfg())
    return model, p


def save_clip(model, preset: ClipPreset, out_dir: str | Path, half: bool = False) -> Path:
    """Save in open_clip's ``local-dir:`` layout: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    (out_dir / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": preset.model_cfg(), "preprocess_cfg": preset.preprocess_cfg()}, indent=1))
    return out_dir


def openclip_text_to_hf(model, preset: ClipPreset):
    """Convert the text tower of an open_clip CLIP into a transformers CLIPTextModel.

    Used to give the tiny Stable Diffusion a frozen, contrastively trained text encoder, as
    SD v1 has. Checked numerically against open_clip in tests.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=preset.vocab_size, hidden_size=preset.text_width, intermediate_size=4 * preset.text_width,
        num_hidden_layers=preset.text_layers, num_attention_heads=preset.text_heads,
        max_position_embeddings=preset.context_length, hidden_act="gelu", projection_dim=preset.embed_dim,
        layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    hf = CLIPTextModel(cfg)
    sd = model.state_dict()
    w = preset.text_width
    new = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
    }
    for i in range(preset.text_layers):
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        qkv_w, qkv_b = sd[src + "attn.in_proj_weight"], sd[src + "attn.in_proj_bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            new[dst + f"self_attn.{name}.weight"] = qkv_w[j * w : (j + 1) * w]
            new[dst + f"self_attn.{name}.bias"] = qkv_b[j * w : (j + 1) * w]
        new[dst + "self_attn.out_proj.weight"] = sd[src + "attn.out_proj.weight"]
        new[dst + "self_attn.out_proj.bias"] = sd[src + "attn.out_proj.bias"]
        new[dst + "layer_norm1.weight"] = sd[src + "ln_1.weight"]
        new[dst + "layer_norm1.bias"] = sd[src + "ln_1.bias"]
        new[dst + "layer_norm2.weight"] = sd[src + "ln_2.weight"]
        new[dst + "layer_norm2.bias"] = sd[src + "ln_2.bias"]
        new[dst + "mlp.fc1.weight"] = sd[src + "mlp.c_fc.weight"]
        new[dst + "mlp.fc1.bias"] = sd[src + "mlp.c_fc.bias"]
        new[dst + "mlp.fc2.weight"] = sd[src + "mlp.c_proj.weight"]
        new[dst + "mlp.fc2.bias"] = sd[src + "mlp.c_proj.bias"]
    # transformers < 5 nests the tower under "text_model."; 5.x does not.
    prefix = "text_model." if any(k.startswith("text_model.") for k in hf.state_dict()) else ""
    new = {prefix + k[len("text_model."):]: v.clone() for k, v in new.items()}
    missing, unexpected = hf.load_state_dict(new, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> CLIPTextModel conversion: missing {missing}, unexpected {unexpected}")
    return hf.to(torch.float32)


def resolve_model(name: str, kind: str = "t2i") -> str:
    """Map the embedded name ``shapes`` to the shipped directory; pass hub ids/dirs through."""
    if name == "shapes":
        path = {"t2i": SHIPPED_T2I, "clip": SHIPPED_CLIP, "editor": SHIPPED_EDITOR}[kind]
        if not path.exists():
            how = ("`python train_editor.py --pipeline shapes --data RUN/export --out DIR`, then "
                   "`editsynth shapes publish-editor DIR`") if kind == "editor" else f"`editsynth shapes train-{kind}`"
            raise FileNotFoundError(
                f"the shipped shapes {kind} model is missing at {path}; train it with {how} "
                "or pass a hub id / local directory")
        return str(path)
    return name

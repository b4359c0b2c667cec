"""The editor factory: any InstructPix2Pix diffusers directory or hub id, or ``shapes``, as an Editor.

An Editor is the five components of an InstructPix2Pix pipeline on one device, plus the facts
sampling needs (VAE factor, size multiple, native resolution). Loading is the normal diffusers
call; device and precision are chosen here: fp16 + channels-last on CUDA (optionally
torch.compile), fp32 on CPU.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from datagen.shapes.models import resolve_model

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# An editor directory may say how it edits best, as transformers' generation_config.json does:
# {"text_guidance": s_T, "image_guidance": s_I, ...provenance}; `editsynth edit-config` writes it.
EDIT_CONFIG_FILE = "edit_config.json"
EDIT_CONFIG_KEYS = ("text_guidance", "image_guidance")


class EditorLoadError(RuntimeError):
    """The model could not be loaded as an InstructPix2Pix editor; the message says why."""


@dataclass
class Editor:
    """An InstructPix2Pix editor ready to sample: components on one device, in one dtype."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler_config: Any            # the default scheduler's config; each edit builds its own
    device: torch.device
    dtype: torch.dtype
    name: str = ""
    compiled: str = ""               # torch.compile mode, "" when not compiled
    edit_defaults: dict = field(default_factory=dict)   # from edit_config.json: s_T, s_I it edits best at
    _null_text: torch.Tensor | None = field(default=None, repr=False)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor times the UNet's downsampling (64 for SD)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        """The size the UNet was built for (512 for SD v1.5, 64 for the shapes editor)."""
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.vae_scale_factor

    @property
    def scheduler_name(self) -> str:
        return self.scheduler_config.get("_class_name", "")

    @classmethod
    def from_pipeline(cls, pipe, name: str = "") -> "Editor":
        """Wrap the components of an in-memory diffusers pipeline (no copy, no device move)."""
        check_editor_unet(pipe.unet, pipe.vae)
        return cls(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                   scheduler_config=pipe.scheduler.config, device=pipe.unet.device, dtype=pipe.unet.dtype,
                   name=name or getattr(pipe, "name_or_path", "") or "")

    def encode_instructions(self, texts: list[str]) -> torch.Tensor:
        """``encode_text`` on this editor's device and dtype; says when an instruction was truncated."""
        tok = self.tokenizer
        if any(len(tok(t).input_ids) > tok.model_max_length for t in texts):
            log.warning("an instruction is longer than the text encoder's %d tokens and was truncated",
                        tok.model_max_length)
        return encode_text(self.text_encoder, tok, texts, self.device).to(dtype=self.dtype)

    def null_text_embedding(self) -> torch.Tensor:
        """The encoding of "" (the null text of classifier-free guidance), computed once."""
        if self._null_text is None:
            self._null_text = self.encode_instructions([""])
        return self._null_text


def as_editor(obj) -> Editor:
    """An Editor, or a diffusers pipeline with vae/text_encoder/tokenizer/unet/scheduler."""
    if isinstance(obj, Editor):
        return obj
    if all(hasattr(obj, k) for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")):
        return Editor.from_pipeline(obj)
    raise TypeError(f"expected an Editor or an InstructPix2Pix pipeline, got {type(obj).__name__}")


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids padded (and truncated) to the text encoder's window, as Stable Diffusion reads them."""
    return tokenizer(prompts, max_length=tokenizer.model_max_length, padding="max_length",
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_text(text_encoder, tokenizer, prompts: list[str], device=None) -> torch.Tensor:
    """CLIP text encoder hidden states, as Stable Diffusion conditions on them (padded to max length)."""
    device = device or next(text_encoder.parameters()).device
    return text_encoder(tokenize(tokenizer, prompts).to(device))[0]


def check_editor_unet(unet, vae) -> None:
    latent = vae.config.latent_channels
    if unet.config.in_channels != 2 * latent:
        raise EditorLoadError(
            f"not an InstructPix2Pix editor: its UNet takes {unet.config.in_channels} input channels, "
            f"an editor takes {2 * latent} (noisy latent + image latent). A text-to-image model must be "
            f"trained into an editor first (`editsynth train`).")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EditorLoadError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise EditorLoadError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return table[dtype]


def load_editor(model: str = "shapes", device: str = "auto", dtype: str = "auto",
                compile_mode: str = "") -> Editor:
    """Load an InstructPix2Pix editor: a diffusers directory, a hub id, or ``shapes`` (shipped)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    try:
        path = resolve_model(model, "editor")
    except FileNotFoundError as e:
        raise EditorLoadError(str(e)) from None
    if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().exists():
        raise EditorLoadError(f"no such model directory: {path}")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 prefers `dtype=`; `torch_dtype=` works on every version we support.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                str(Path(path).expanduser()) if path.startswith("~") else path, torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError, EnvironmentError) as e:
        raise EditorLoadError(f"cannot load {model!r} as an InstructPix2Pix diffusers pipeline "
                              f"(a directory with model_index.json, or a hub id): {e}") from None
    editor = Editor.from_pipeline(pipe, name=model)
    editor.edit_defaults = read_edit_config(Path(path).expanduser())
    return place(editor, dev, torch_dtype, compile_mode)


def read_edit_config(directory: Path) -> dict:
    """The guidance scales an editor directory recommends (EDIT_CONFIG_FILE), {} when it has none
    (a hub id, or an editor nobody has tuned)."""
    path = directory / EDIT_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        defaults = {k: float(data[k]) for k in EDIT_CONFIG_KEYS if k in data}
    except (ValueError, TypeError, AttributeError) as e:
        raise EditorLoadError(f"{path}: not a valid edit config ({e}); fix or delete it") from None
    if any(v < 0 for v in defaults.values()):
        raise EditorLoadError(f"{path}: guidance scales must be >= 0, got {defaults}")
    return defaults


def place(editor: Editor, device: torch.device, dtype: torch.dtype, compile_mode: str = "") -> Editor:
    """Move an editor to its device and precision, fuse attention projections; on CUDA use
    channels-last; optionally torch.compile the UNet (on CPU with freezing)."""
    for module in (editor.vae, editor.text_encoder, editor.unet):
        if module.dtype != dtype:  # (a same-dtype .to() makes diffusers warn for nothing)
            module.to(dtype=dtype)
        module.to(device=device).eval().requires_grad_(False)
    editor.device, editor.dtype, editor._null_text = device, dtype, None
    try:
        # One matmul for q, k, v (k, v in cross-attention) instead of three: the same weights.
        editor.unet.fuse_qkv_projections()
    except (AttributeError, ValueError):  # an old diffusers, or added-KV attention: keep them apart
        pass
    if device.type == "cuda":
        # Convolutions in NHWC run on tensor cores without layout transposes.
        editor.unet.to(memory_format=torch.channels_last)
        editor.vae.to(memory_format=torch.channels_last)
    if compile_mode:
        if compile_mode not in COMPILE_MODES:
            raise EditorLoadError(f"unknown torch.compile mode {compile_mode!r}; use one of {COMPILE_MODES}")
        if device.type == "cpu":
            # On CPU the gain comes from freezing: weights become constants, prepacked for oneDNN
            # (~1.4x on the shapes UNet); the modes are about CUDA graphs and GPU autotuning.
            editor.unet = torch.compile(editor.unet, fullgraph=True, options={"freezing": True})
            editor.compiled = "freezing"
        else:
            editor.unet = torch.compile(editor.unet, mode=compile_mode, fullgraph=True)
            editor.compiled = compile_mode
    return editor

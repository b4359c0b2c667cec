"""Training throughput: our editor step against diffusers' train_instruct_pix2pix.py step.

Same model (random weights of a preset), same batch, same precision, same device, measured
in one run with the two steps interleaved (so machine load hits both alike). The reference
step is the body of the training loop of diffusers' examples/instruct_pix2pix script: two VAE
encodes, the text encoder for the batch AND for "" every step, conditioning dropout with a
global generator, a loss gathered and read back (``.item()``) every step, per-tensor EMA.
Ours is ``model.training.objective.editor_loss`` + the loop of ``model.training.loop`` (one VAE pass for both
images, the null text encoded once, per-sample draws, foreach EMA, fused AdamW and
channels-last on CUDA, no per-step host sync).

    python bench/train.py --device cpu --preset shapes --batch 8
    python bench/train.py --device cuda --preset sd --resolution 256 --batch 4 --precision fp16 \
        --gradient-checkpointing --use-8bit-adam   # SD-size, random weights; prints peak GPU memory

Last line: JSON with samples_per_s_ours, samples_per_s_reference, speedup, device (+ settings).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datagen.shapes.models import (T2I_PRESETS, build_scheduler, build_text_encoder, build_tokenizer,  # noqa: E402
                                   build_unet, build_vae)
from model.editor.loading import encode_text, tokenize  # noqa: E402
from model.training import objective as editor  # noqa: E402

P_DROP = 0.05


def build_models(preset: str, seed: int = 0):
    """(vae, text_encoder, tokenizer, unet with 8 input channels, DDPM scheduler) of a preset."""
    torch.manual_seed(seed)
    if preset == "sd":  # Stable Diffusion v1.5's architecture, random weights
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512)
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                    num_attention_heads=12, max_position_embeddings=77,
                                                    projection_dim=768, hidden_act="quick_gelu"))
        tokenizer = build_tokenizer(77)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    else:
        p = T2I_PRESETS[preset]
        vae, text_encoder, tokenizer = build_vae(p), build_text_encoder(p), build_tokenizer(p.context_length)
        unet = build_unet(p)
    return vae, text_encoder, tokenizer, editor.widen_conv_in(unet), build_scheduler()


class Side:
    """One trainer: its own UNet copy, AdamW, EMA and (fp16) grad scaler."""

    def __init__(self, unet, device, ours: bool, precision: str, checkpointing: bool, adam_8bit: bool):
        from diffusers.training_utils import EMAModel

        self.unet = copy.deepcopy(unet).to(device).train()
        if checkpointing:
            self.unet.enable_gradient_checkpointing()
        cuda = device.type == "cuda"
        if ours and cuda:
            self.unet.to(memory_format=torch.channels_last)
        if adam_8bit:  # both sides alike, as the script's --use_8bit_adam and our train.use_8bit_adam
            import bitsandbytes as bnb

            self.optimizer = bnb.optim.AdamW8bit(self.unet.parameters(), lr=1e-4)
        else:
            self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-4, fused=(ours and cuda) or None)
        self.ema = EMAModel(self.unet.parameters(), decay=0.9999, foreach=ours)
        self.ema.to(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.autocast = torch.autocast(device.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            precision, torch.float32), enabled=precision != "no")

    def update(self, loss):
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())


def reference_step(side: Side, vae, text_encoder, tokenizer, sched, batch, generator, weight_dtype) -> float:
    """The loop body of diffusers' train_instruct_pix2pix.py (single process, no accumulation)."""
    with side.autocast:
        latents = vae.encode(batch["edited"].to(weight_dtype)).latent_dist.sample()
        latents = latents * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (bsz,), device=latents.device).long()
        noisy_latents = sched.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(batch["input_ids"])[0]
        original_image_embeds = vae.encode(batch["original"].to(weight_dtype)).latent_dist.mode()
        random_p = torch.rand(bsz, device=latents.device, generator=generator)
        prompt_mask = (random_p < 2 * P_DROP).reshape(bsz, 1, 1)
        null_ids = tokenizer([""], max_length=tokenizer.model_max_length, padding="max_length",
                             truncation=True, return_tensors="pt").input_ids.to(latents.device)
        null_conditioning = text_encoder(null_ids)[0]
        encoder_hidden_states = torch.where(prompt_mask, null_conditioning, encoder_hidden_states)
        image_mask_dtype = original_image_embeds.dtype
        image_mask = 1 - ((random_p >= P_DROP).to(image_mask_dtype) * (random_p < 3 * P_DROP).to(image_mask_dtype))
        original_image_embeds = image_mask.reshape(bsz, 1, 1, 1) * original_image_embeds
        concatenated = torch.cat([noisy_latents, original_image_embeds], dim=1)
        model_pred = side.unet(concatenated, timesteps, encoder_hidden_states).sample
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
    avg_loss = loss.detach().repeat(bsz).mean()   # accelerator.gather(...) in one process
    train_loss = avg_loss.item()                  # read back every step, as the script does
    side.update(loss)
    return train_loss


def our_step(side: Side, vae, text_encoder, null_text, sched, batch, seeds, weight_dtype):
    with side.autocast:
        loss = editor.editor_loss(side.unet, vae, text_encoder, sched, null_text,
                                  editor.LossInputs(batch["original"], batch["edited"], batch["input_ids"], seeds),
                                  P_DROP, P_DROP, P_DROP, weight_dtype)
    side.update(loss)
    return loss.detach()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--preset", choices=["test", "shapes", "sd"], default="shapes")
    ap.add_argument("--resolution", type=int, default=None, help="default: the preset's image size (sd: 256)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", choices=["no", "fp16", "bf16"], default="no")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--use-8bit-adam", action="store_true", help="bitsandbytes AdamW8bit on both sides")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed blocks per side")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.precision == "fp16" and device.type == "cpu":
        raise SystemExit("--precision fp16 needs --device cuda")
    resolution = args.resolution or (256 if args.preset == "sd" else T2I_PRESETS[args.preset].image_size)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.precision, torch.float32)

    vae, text_encoder, tokenizer, unet, sched = build_models(args.preset)
    vae = editor.freeze(vae).to(device, weight_dtype)
    text_encoder = editor.freeze(text_encoder).to(device, weight_dtype)
    g = torch.Generator().manual_seed(0)
    batch = {
        "original": (torch.rand(args.batch, 3, resolution, resolution, generator=g) * 2 - 1).to(device),
        "edited": (torch.rand(args.batch, 3, resolution, resolution, generator=g) * 2 - 1).to(device),
        "input_ids": tokenize(tokenizer, ["make the square red"] * args.batch).to(device),
    }
    null_text = encode_text(text_encoder, tokenizer, [""], device)
    gen = torch.Generator(device=device).manual_seed(0)
    counter = [0]

    def run_ref(side, n):
        for _ in range(n):
            reference_step(side, vae, text_encoder, tokenizer, sched, batch, gen, weight_dtype)

    def run_ours(side, n):
        for _ in range(n):
            seeds = list(range(counter[0], counter[0] + args.batch))
            counter[0] += args.batch
            our_step(side, vae, text_encoder, null_text, sched, batch, seeds, weight_dtype)

    def timed(fn, side, n):
        _sync(device)
        t = time.perf_counter()
        fn(side, n)
        _sync(device)
        return time.perf_counter() - t

    def make(name):
        return Side(unet, device, name == "ours", args.precision, args.gradient_checkpointing, args.use_8bit_adam)

    steps = {"reference": run_ref, "ours": run_ours}
    times = {"reference": 0.0, "ours": 0.0}
    per_round = max(1, args.steps // args.rounds)
    peak = {}
    if device.type == "cpu":
        # A shared CPU's load drifts: keep both trainers resident and alternate timed blocks.
        sides = {name: make(name) for name in steps}
        for name in sides:
            steps[name](sides[name], args.warmup)
        for _ in range(args.rounds):
            for name in sides:
                times[name] += timed(steps[name], sides[name], per_round)
    else:
        # One trainer on the GPU at a time, so the peak memory is that of one trainer.
        for name in steps:
            side = make(name)
            steps[name](side, args.warmup)
            torch.cuda.reset_peak_memory_stats()
            times[name] = timed(steps[name], side, per_round * args.rounds)
            peak[name] = torch.cuda.max_memory_allocated() / 2**30
            del side
            torch.cuda.empty_cache()
    n = per_round * args.rounds * args.batch
    sps_ref, sps_ours = n / times["reference"], n / times["ours"]
    print(f"reference (diffusers train_instruct_pix2pix step): {sps_ref:8.2f} samples/s")
    print(f"ours      (model.training.loop step):                     {sps_ours:8.2f} samples/s")
    result = {
        "samples_per_s_ours": round(sps_ours, 3), "samples_per_s_reference": round(sps_ref, 3),
        "speedup": round(sps_ours / sps_ref, 3), "device": torch.cuda.get_device_name() if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "preset": args.preset, "resolution": resolution, "batch": args.batch, "precision": args.precision,
        "gradient_checkpointing": args.gradient_checkpointing, "use_8bit_adam": args.use_8bit_adam,
        "unet_parameters": sum(p.numel() for p in unet.parameters()), "timed_steps_per_side": per_round * args.rounds,
    }
    if peak:
        result["peak_gpu_mem_gib_ours"] = round(peak["ours"], 2)
        result["peak_gpu_mem_gib_reference"] = round(peak["reference"], 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

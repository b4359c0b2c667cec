"""Trainers of the shipped shapes-world models: tiny CLIP, then the tiny Stable Diffusion.

Order matters: the CLIP's text tower becomes the frozen text encoder of the tiny SD (SD v1's
own recipe: a frozen, contrastively trained text encoder), and the VAE's latents feed the UNet.
Every trainer is reproducible from its seed, checkpoints every few minutes into
``<work>/<model>/`` (full fp32 state, for resume) and publishes small fp16 safetensors into the
shipped weights folder, with the oracle's figures appended to ``<weights>/<model>.log.jsonl``.
Uses the GPU when one is present, the CPU otherwise.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datagen.shapes import data, oracle, world
from datagen.shapes.models import (
    CLIP_PRESETS,
    SHIPPED_CLIP,
    SHIPPED_DIR,
    SHIPPED_EDITOR,
    SHIPPED_T2I,
    T2I_PRESETS,
    build_clip,
    build_scheduler,
    build_tokenizer,
    build_unet,
    build_vae,
    openclip_text_to_hf,
    save_clip,
)

log = logging.getLogger(__name__)
HELD_OUT_SEED = -1_000_000   # held-out scenes come from negative seeds


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _log(name: str, row: dict, folder: Path | None = None) -> None:
    folder = SHIPPED_DIR if folder is None else folder   # looked up now: tests point it elsewhere
    folder.mkdir(parents=True, exist_ok=True)
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
    with open(folder / f"{name}.log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    log.info("%s %s", name, row)


def _save_state(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_state(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def _lr(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# ---------------------------------------------------------------------------------------
# Tiny CLIP
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_clip(model, preset, n: int = 200, seed: int = HELD_OUT_SEED) -> dict:
    """Caption retrieval top-1 on held-out renders: each image against the n captions."""
    import open_clip

    model.eval()
    tok = open_clip.SimpleTokenizer(context_length=preset.context_length)
    scenes = data.scene_batch(seed, n)
    dev = next(model.parameters()).device
    img = F.normalize(model.encode_image(data.render_batch(scenes, preset.image_size).to(dev)), dim=-1)
    txt = F.normalize(model.encode_text(tok(data.captions(scenes)).to(dev)), dim=-1)
    top1 = (img @ txt.T).argmax(-1).eq(torch.arange(n, device=dev)).float().mean().item()
    # The harder test the filter needs: the true caption against a minimally edited one.
    neg = F.normalize(model.encode_text(tok(data.hard_negative_captions(scenes, seed)).to(dev)), dim=-1)
    pairwise = ((img * txt).sum(-1) > (img * neg).sum(-1)).float().mean().item()
    model.train()
    return {"clip_top1": round(top1, 4), "clip_vs_edited_caption": round(pairwise, 4)}


def train_clip(steps: int = 1500, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
               work: str | Path = "runs/shapes-train", eval_every: int = 100, preset: str = "shapes",
               out: str | Path | None = None, image_only: bool = False) -> dict:
    """Train the tiny CLIP; snapshots go into the shipped folder, or into the candidate folder
    ``out`` (resumed from when ``<work>`` is gone). ``image_only`` trains the image tower alone:
    the text tower is the T2I's frozen text encoder, and stays exactly as it was."""
    import open_clip

    dev = _device()
    p = CLIP_PRESETS[preset]
    folder, log_folder = (SHIPPED_CLIP, SHIPPED_DIR) if out is None else (Path(out), Path(out))
    model, _ = build_clip(p, seed=seed)
    model.to(dev)
    if image_only:
        model.requires_grad_(False)
        model.visual.requires_grad_(True)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr, weight_decay=0.1)
    state_path = Path(work) / "clip" / "state.pt"
    step = 0
    if (state := _load_state(state_path)) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log.info("clip: resumed at step %d", step)
    elif (start := next((f for f in (folder, SHIPPED_CLIP) if _shipped_step(f) is not None), None)) is not None:
        # A fresh machine: continue from the committed fp16 weights, the candidate's first (the optimiser restarts).
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(start / "open_clip_model.safetensors").items()})
        step = _shipped_step(start)
        log.info("clip: resumed from the fp16 weights in %s at step %d", start, step)
    tok = open_clip.SimpleTokenizer(context_length=p.context_length)
    gen = torch.Generator().manual_seed(seed)
    t0, last_save = time.time(), time.time()
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, lr, 100, steps)
        scenes = data.scene_batch(seed * 1_000_003 + step, batch_size)
        x = data.degrade(data.render_batch(scenes, p.image_size, seed=step), gen).to(dev)
        texts = tok(data.captions(scenes) + data.hard_negative_captions(scenes, step)).to(dev)
        img, txt, scale = model(x, texts)[:3]
        logits = scale * img @ txt.T
        target = torch.arange(batch_size, device=dev)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :batch_size].T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        if step % eval_every == 0 or step == steps or time.time() - last_save > 300:
            metrics = evaluate_clip(model, p)
            _log("clip", {"step": step, "loss": round(loss.item(), 4), "minutes": round((time.time() - t0) / 60, 2),
                          "device": str(dev), "world": world.WORLD_VERSION, "image_only": image_only, **metrics},
                 log_folder)
            _save_state(state_path, model=model.state_dict(), opt=opt.state_dict(), step=step)
            save_clip(model, p, folder, half=True)
            (folder / "train_state.json").write_text(json.dumps({"step": step, "seed": seed,
                                                                 "world": world.WORLD_VERSION, **metrics}))
            last_save = time.time()
    return evaluate_clip(model, p)


def evaluate_shipped_clip(n: int = 200, preset: str = "shapes") -> dict:
    """Judge the shipped CLIP as users load it (fp16 weights) on n held-out renders of the current
    world; the figures go into its log (not train_state.json: that records its training)."""
    from safetensors.torch import load_file

    model, _ = build_clip(CLIP_PRESETS[preset])
    model.load_state_dict({k: v.float() for k, v in load_file(SHIPPED_CLIP / "open_clip_model.safetensors").items()})
    metrics = evaluate_clip(model.to(_device()), CLIP_PRESETS[preset], n=n)
    _log("clip", {"step": _shipped_step(SHIPPED_CLIP), "evaluation": f"shipped fp16, {n} held-out renders",
                  "world": world.WORLD_VERSION, **metrics})
    return metrics


# ---------------------------------------------------------------------------------------
# Tiny Stable Diffusion: VAE, then UNet over precomputed latents
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_vae(vae, n: int = 200, seed: int = HELD_OUT_SEED) -> dict:
    vae.eval()
    scenes = data.scene_batch(seed, n)
    x = data.render_batch(scenes).to(next(vae.parameters()).device)
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
    rows = [oracle.caption_agreement(im, c) for im, c in zip(data.to_pil(rec), data.captions(scenes))]
    vae.train()
    return {f"rec_{k}": round(sum(r[k] for r in rows) / n, 4) for k in rows[0]}


def train_vae(steps: int = 3000, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
              work: str | Path = "runs/shapes-train", eval_every: int = 250, preset: str = "shapes",
              object_weight: float = 9.0, kl_weight: float = 1e-6, decoder_only: bool = False,
              edge_weight: float = 0.0, tip_weight: float = 0.0) -> dict:
    """Train the VAE; ``decoder_only`` fine-tunes the decoder of a trained VAE alone, so the
    latents (and a UNet trained on them) stay valid while the decoded images get sharper."""
    dev = _device()
    p = T2I_PRESETS[preset]
    torch.manual_seed(seed)
    vae = build_vae(p).to(dev)
    state_path = Path(work) / ("vae-decoder" if decoder_only else "vae") / "state.pt"
    step = 0
    if (state := _load_state(state_path)) is not None:
        vae.load_state_dict(state["model"])
        step = state["step"]
    elif (shipped := _shipped_step(SHIPPED_T2I / "vae")) is not None:
        vae = type(vae).from_pretrained(SHIPPED_T2I / "vae", torch_dtype=torch.float32).to(dev)
        step = shipped
        log.info("vae: resumed from the shipped weights at step %d", step)
    elif decoder_only:
        raise FileNotFoundError("--decoder-only fine-tunes a trained VAE: none found under "
                                f"{state_path.parent} or {SHIPPED_T2I / 'vae'}")
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
        # The encoder stays as shipped, so does the latent scale the UNet was trained with (the
        # T2I trainer registers it in the shipped config; a resumed state does not carry it).
        if (shipped_config := SHIPPED_T2I / "vae" / "config.json").exists():
            vae.register_to_config(scaling_factor=json.loads(shipped_config.read_text())["scaling_factor"])
    opt = torch.optim.AdamW([q for q in vae.parameters() if q.requires_grad], lr=lr)
    if state is not None:
        opt.load_state_dict(state["opt"])
    t0, last_save = time.time(), time.time()
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, lr, 100, steps)
        scenes = data.scene_batch(seed * 1_000_003 + step, batch_size)
        x = data.render_batch(scenes, p.image_size, seed=step).to(dev)
        # Objects are a small share of the pixels: weight them up or their colours come last.
        mask = data.object_mask(scenes, p.image_size).to(dev)
        w = 1.0 + object_weight * mask
        if edge_weight:
            # Outlines tell a small triangle from a small circle; a plain loss rounds their corners.
            w = w + edge_weight * data.boundary_mask(mask)
        if tip_weight:
            # Thin tips blur into the background's colour first, and a tipless triangle reads as a circle.
            w = w + tip_weight * data.thin_mask(mask)
        with torch.set_grad_enabled(not decoder_only):
            post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = ((rec - x).abs() * w).mean() + (((rec - x) ** 2) * w).mean()
        if not decoder_only:
            loss = loss + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % eval_every == 0 or step == steps or time.time() - last_save > 300:
            metrics = evaluate_vae(vae)
            _log("vae", {"step": step, "loss": round(loss.item(), 4), "minutes": round((time.time() - t0) / 60, 2),
                         "device": str(dev), "decoder_only": decoder_only, "edge_weight": edge_weight,
                         "tip_weight": tip_weight, **metrics})
            _save_state(state_path, model=vae.state_dict(), opt=opt.state_dict(), step=step)
            publish_vae(vae, step, metrics)
            last_save = time.time()
    return evaluate_vae(vae)


def publish_vae(vae, step: int, metrics: dict) -> Path:
    """Save the VAE (fp16) into the shipped pipeline folder, so a later session can resume it."""
    import copy

    out = SHIPPED_T2I / "vae"
    copy.deepcopy(vae).to(torch.float16).save_pretrained(out, safe_serialization=True)
    _drop_local_paths(out)
    (out / "train_state.json").write_text(json.dumps({"step": step, **metrics}))
    return out


def _drop_local_paths(folder: Path) -> None:
    """Remove ``_name_or_path`` (where a model was loaded from on this machine) from the diffusers
    configs under ``folder``: a path of one machine does not belong in shipped weights."""
    for config_path in [folder / "model_index.json", *folder.rglob("config.json")]:
        if not config_path.exists():
            continue
        config = json.loads(config_path.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _shipped_step(folder: Path) -> int | None:
    state = folder / "train_state.json"
    return json.loads(state.read_text())["step"] if state.exists() else None


def _text_encoder_from_clip(clip_dir: Path):
    import open_clip

    from datagen.shapes.models import ClipPreset

    cfg = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.create_model(f"local-dir:{clip_dir}", precision="fp32")
    t = cfg["text_cfg"]
    preset = ClipPreset(embed_dim=cfg["embed_dim"], text_width=t["width"], text_layers=t["layers"],
                        text_heads=t["heads"], context_length=t["context_length"], vocab_size=t["vocab_size"])
    return openclip_text_to_hf(model, preset), preset.context_length


@torch.no_grad()
def evaluate_t2i(pipe, n: int = 64, steps: int = 25, guidance: float = 4.0, seed: int = HELD_OUT_SEED) -> dict:
    scenes = data.scene_batch(seed, n)
    caps = data.captions(scenes)
    gen = torch.Generator().manual_seed(0)
    images = []
    for i in range(0, n, 16):
        images += pipe(caps[i:i + 16], num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                       height=64, width=64).images
    parsed = [oracle.parse_image(im) for im in images]   # once: caption match and spread both read it
    rows = [oracle.scene_agreement(p, c) for p, c in zip(parsed, caps)]
    metrics = {k: round(sum(r[k] for r in rows) / n, 4) for k in rows[0]}
    return {**metrics, **unnamed_spread(parsed, scenes)}, images


def unnamed_spread(parsed, scenes) -> dict:
    """How far the small objects of scenes parsed from generated images spread their un-named offsets
    (std, px) against the renders' of the same captions (``scenes``). Caption match cannot see them: a
    T2I that sets every object at its slot's centre matches as many captions and draws none of world 2
    (a large object has 1 px of room)."""
    def std(values) -> float | None:
        return round(float(np.std(values)), 3) if values else None
    generated = [o.x_offset for p in parsed for o in p.objects if o.size == "small" and o.x_offset is not None]
    rendered = [o.x_offset for s in scenes for o in s.objects if o.size == "small"]
    return {"x_offset_std": std(generated), "x_offset_std_renders": std(rendered)}


def _assemble_pipeline(vae, unet, text_encoder, context_length: int):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(context_length), unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(build_scheduler().config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_unet(steps: int = 6000, batch_size: int = 64, lr: float = 6e-4, seed: int = 0,
               work: str | Path = "runs/shapes-train", eval_every: int = 500, preset: str = "shapes",
               num_scenes: int = 30000, caption_dropout: float = 0.1, offset_noise: float = 0.1,
               ema_max: float = 0.999, min_snr_gamma: float = 5.0, out: str | Path | None = None) -> dict:
    """Train the UNet over precomputed VAE latents with the frozen CLIP text tower.

    Snapshots (fp16 pipeline, train_state.json, t2i.log.jsonl) go into the shipped folder, or into
    ``out``: a candidate that replaces nothing until judged (``eval-t2i --model OUT``) and that a
    later session resumes from when ``<work>`` is gone.
    """
    import copy

    dev = _device()
    folder, log_folder = (SHIPPED_T2I, SHIPPED_DIR) if out is None else (Path(out), Path(out))
    p = T2I_PRESETS[preset]
    work = Path(work)
    vae_state = _load_state(work / "vae" / "state.pt")
    if vae_state is not None:
        vae = build_vae(p)
        vae.load_state_dict(vae_state["model"])
        vae_step = vae_state["step"]
    elif (vae_step := _shipped_step(SHIPPED_T2I / "vae")) is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(SHIPPED_T2I / "vae", torch_dtype=torch.float32)
    else:
        raise FileNotFoundError(f"no trained VAE under {work / 'vae'} or {SHIPPED_T2I / 'vae'}: "
                                "run `editsynth shapes train-vae` first")
    vae.to(dev).eval()
    text_encoder, context_length = _text_encoder_from_clip(SHIPPED_CLIP)
    text_encoder.to(dev).eval()
    tokenizer = build_tokenizer(context_length)

    # A new VAE or a new world, new latents.
    cache = work / "unet" / f"latents-{num_scenes}-vae{vae_step}-world{world.WORLD_VERSION}.pt"
    if cache.exists():
        cached = torch.load(cache)
    else:
        latents, ids = [], []
        for i in range(0, num_scenes, 256):
            scenes = data.scene_batch(seed * 1_000_003 + i, min(256, num_scenes - i))
            with torch.no_grad():
                latents.append(vae.encode(data.render_batch(scenes, p.image_size, seed=i).to(dev)).latent_dist.mode().cpu())
            ids.append(tokenizer(data.captions(scenes), padding="max_length", max_length=context_length,
                                 truncation=True, return_tensors="pt").input_ids)
        cached = {"latents": torch.cat(latents), "ids": torch.cat(ids)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cached, cache)
    latents_all, ids_all = cached["latents"], cached["ids"]
    # Unit-variance latents, as SD's 0.18215 does for its VAE.
    scaling = float(1.0 / latents_all.std())
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        null_ids = tokenizer([""], padding="max_length", max_length=context_length, return_tensors="pt").input_ids

    torch.manual_seed(seed)
    unet = build_unet(p).to(dev)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    sched = build_scheduler()
    state_path = work / "unet" / "state.pt"
    step = 0
    if (state := _load_state(state_path)) is not None:
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log.info("unet: resumed at step %d", step)
    elif (start := next((f for f in (folder, SHIPPED_T2I) if _shipped_step(f) is not None
                         and (f / "unet").exists()), None)) is not None:
        # A fresh machine: continue from the committed fp16 (EMA) weights, the candidate's first.
        from diffusers import UNet2DConditionModel

        shipped_unet = UNet2DConditionModel.from_pretrained(start / "unet", torch_dtype=torch.float32)
        unet.load_state_dict(shipped_unet.state_dict())
        ema.load_state_dict(shipped_unet.state_dict())
        step = _shipped_step(start)
        log.info("unet: resumed from the fp16 (EMA) weights in %s at step %d", start, step)
    gen = torch.Generator().manual_seed(seed + step)
    alphas = sched.alphas_cumprod.to(dev)
    t0, last_save, first_step = time.time(), time.time(), step
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, lr, 200, steps)
        idx = torch.randint(0, len(latents_all), (batch_size,), generator=gen)
        x0 = latents_all[idx].to(dev) * scaling
        ids = ids_all[idx].clone()
        drop = torch.rand(batch_size, generator=gen) < caption_dropout
        ids[drop] = null_ids
        with torch.no_grad():
            cond = text_encoder(ids.to(dev))[0]
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        # Offset noise: a flat-colour world lives in the per-channel means that SD's schedule
        # never fully destroys; this teaches the model to set them.
        noise = noise + offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=gen).to(dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen).to(dev)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # Min-SNR-5 weighting (Hang et al. 2023): stops the many easy high-SNR steps from
        # dominating the gradient; reported ~3x faster convergence.
        snr = a / (1 - a)
        weight = snr.clamp(max=min_snr_gamma) / snr
        loss = (weight * (unet(xt, t, cond).sample - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(ema_max, (1 + step) / (10 + step))   # EMA warm-up: no long lag early on
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(pm, 1 - decay)
        if step % 50 == 0:
            log.info("unet step %d loss %.4f (%.2f s/step)", step, loss.item(), (time.time() - t0) / (step - first_step))
        if step % eval_every == 0 or step == steps or time.time() - last_save > 600:
            _save_state(state_path, model=unet.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step)
            row = {"step": step, "loss": round(loss.item(), 4), "minutes": round((time.time() - t0) / 60, 2),
                   "device": str(dev), "scaling_factor": round(scaling, 5)}
            for name, net in (("ema", ema), ("raw", unet)):
                pipe = _assemble_pipeline(vae, net, text_encoder, context_length)
                metrics, images = evaluate_t2i(pipe, n=32)
                row.update({f"{name}_{k}": v for k, v in metrics.items()})
            _log("t2i", {**row, "world": world.WORLD_VERSION}, log_folder)
            publish_t2i(_assemble_pipeline(vae, ema, text_encoder, context_length), step,
                        {k: v for k, v in row.items() if k.startswith("ema_")}, folder)
            last_save = time.time()
    return row


def evaluate_shipped_t2i(n: int = 200, steps: int = 25, guidance: float = 4.0,
                         model: str | Path | None = None) -> dict:
    """Judge a T2I as users load it (fp16 weights, its own VAE) on n held-out captions of the
    current world; the figures go into its log and train_state.json (the shipped one's are what
    reports and the model card read)."""
    from diffusers import StableDiffusionPipeline

    model = SHIPPED_T2I if model is None else Path(model)
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False).to(_device())
    pipe.set_progress_bar_config(disable=True)
    metrics, _ = evaluate_t2i(pipe, n=n, steps=steps, guidance=guidance)
    state = json.loads((model / "train_state.json").read_text())
    vae_step = _shipped_step(SHIPPED_T2I / "vae")
    what = "shipped" if model.resolve() == SHIPPED_T2I.resolve() else "candidate"
    _log("t2i", {"step": state["step"], "evaluation": f"{what} fp16, {n} held-out captions, {steps} steps, CFG {guidance}",
                 "vae_step": vae_step, "world": world.WORLD_VERSION, **{f"ema_{k}": v for k, v in metrics.items()}},
         SHIPPED_DIR if what == "shipped" else model)
    state.update({f"ema_{k}": v for k, v in metrics.items()}, eval_captions=n, vae_step=vae_step,
                 world=world.WORLD_VERSION)
    (model / "train_state.json").write_text(json.dumps(state))
    return metrics


def publish_t2i(pipe, step: int, metrics: dict, folder: Path | None = None) -> Path:
    """Save the pipeline as a diffusers directory (the shipped one unless told), fp16 weights (small
    to commit)."""
    import copy

    folder = SHIPPED_T2I if folder is None else folder
    half = copy.deepcopy(pipe).to(torch.float16)
    half.save_pretrained(folder, safe_serialization=True)
    _drop_local_paths(folder)   # a VAE resumed from the shipped folder carries its path
    (folder / "train_state.json").write_text(json.dumps({"step": step, "world": world.WORLD_VERSION, **metrics}))
    return folder


# ---------------------------------------------------------------------------------------
# The editor (trained by model/, published here)
# ---------------------------------------------------------------------------------------
ENCODER_PREFIXES = ("encoder.", "quant_conv.")


def adopt_decoder(editor_dir: str | Path, vae_dir: str | Path = SHIPPED_T2I / "vae") -> Path:
    """Give an editor the decoder of a VAE that encodes exactly as its own (a ``--decoder-only``
    fine-tune of it): the editor's latents, and all it learnt on them, stay valid while its
    outputs decode sharper. Refuses a VAE whose encoder differs."""
    from diffusers import AutoencoderKL

    editor_dir, vae_dir = Path(editor_dir), Path(vae_dir)
    own = AutoencoderKL.from_pretrained(editor_dir / "vae", torch_dtype=torch.float32)
    new = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
    mine, theirs = own.state_dict(), new.state_dict()
    if mine.keys() != theirs.keys():
        raise ValueError(f"{vae_dir} is not the same VAE architecture as {editor_dir / 'vae'}")
    changed = [k for k in mine if k.startswith(ENCODER_PREFIXES) and not torch.equal(mine[k], theirs[k])]
    if changed:
        raise ValueError(f"{vae_dir} encodes differently from the editor's VAE ({len(changed)} encoder tensors "
                         f"differ, e.g. {changed[0]}): the editor's latents would no longer fit; only a "
                         "decoder-only fine-tune of the same VAE can be adopted")
    new.register_to_config(scaling_factor=own.config.scaling_factor)   # the editor's latent scale
    new.save_pretrained(editor_dir / "vae", safe_serialization=True)
    _drop_local_paths(editor_dir / "vae")
    info_path = editor_dir / "editsynth_train.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        info["vae_decoder_from"] = {"dir": str(vae_dir), "step": _shipped_step(vae_dir)}
        info_path.write_text(json.dumps(info, indent=1))
    return editor_dir / "vae"


def publish_editor(trained: str | Path, evaluation: str | Path | None = None) -> Path:
    """Ship an editor trained by ``train_editor.py --pipeline shapes``: its pipeline in fp16 with
    its README (command, steps, device, time), and a log row with its oracle figures
    (``oracle_edit.json`` of ``editsynth eval --oracle``)."""
    import shutil

    from diffusers import StableDiffusionInstructPix2PixPipeline

    from model.training.data import is_shard_pattern
    from model.training.loop import shard_folders

    trained = Path(trained)
    info_path = trained / "editsynth_train.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{trained} is not a finished editsynth editor run (no {info_path.name})")
    info = json.loads(info_path.read_text())
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(trained, torch_dtype=torch.float16,
                                                                  safety_checker=None, requires_safety_checker=False)
    pipe.save_pretrained(SHIPPED_EDITOR, safe_serialization=True)
    _drop_local_paths(SHIPPED_EDITOR)
    for name in ("README.md", "editsynth_train.json"):
        shutil.copyfile(trained / name, SHIPPED_EDITOR / name)
    # The guidance the old editor was tuned to says nothing of the new one: its own, or none.
    from model.editor.loading import EDIT_CONFIG_FILE

    (SHIPPED_EDITOR / EDIT_CONFIG_FILE).unlink(missing_ok=True)
    if (trained / EDIT_CONFIG_FILE).is_file():
        shutil.copyfile(trained / EDIT_CONFIG_FILE, SHIPPED_EDITOR / EDIT_CONFIG_FILE)
    row = {"step": info["steps"], "minutes": round(info["seconds_total"] / 60, 1), "device": info["device"],
           "world_size": info["world_size"], "effective_batch": info["effective_batch"], "data": info["data"],
           "final_loss": info["final_loss"]}
    if info.get("data_pairs") is not None:
        row["data_pairs"] = info["data_pairs"]
    if info.get("data_shards") and is_shard_pattern(info["data"]):
        # the pattern as typed matches more once more runs exist; keep what it matched then
        row["data_matched"] = {"shards": len(info["data_shards"]), "folders": shard_folders(info["data_shards"])}
    if info.get("retrained_from"):
        from model.training.loop import chain_totals

        total_steps, total_seconds = chain_totals(info)
        row.update({"retrained_from_steps": total_steps - info["steps"], "total_steps": total_steps,
                    "total_minutes": round(total_seconds / 60, 1)})
    if evaluation is not None:
        row.update(_oracle_row(evaluation))
    _log("editor", row)
    return SHIPPED_EDITOR


def _oracle_row(evaluation: str | Path) -> dict:
    """The model card's columns from an `editsynth eval --oracle` folder."""
    from model.evaluation.results import ORACLE_FILE

    figures = json.loads((Path(evaluation) / ORACLE_FILE).read_text())
    row = {k: round(v, 4) for k, v in figures.items() if isinstance(v, float) and not k.endswith("scale")
           and k != "seconds"}
    row["settings"] = (f"{figures['num_scenes']} held-out rendered scenes, {figures['steps']} steps, "
                       f"text/image guidance {figures['text_guidance_scale']}/{figures['image_guidance_scale']}"
                       + (" (its edit_config.json)" if figures.get("guidance_from") == "edit_config.json" else "")
                       + f", SDEdit strength {figures['sdedit_strength']}"
                       + (f", sampler {figures['scheduler']}" if "scheduler" in figures else ""))
    if figures.get("image_guidance_sweep"):
        best = max(figures["image_guidance_sweep"], key=lambda p: p["edit_correct"])
        row["sweep_best"] = (f"s_T {best.get('text_guidance_scale', figures['text_guidance_scale'])} / "
                             f"s_I {best['image_guidance_scale']}: edit {best['edit_accuracy']:.3f}, "
                             f"kept {best['preservation']:.3f}, both {best['edit_correct']:.3f}")
    return row


def log_shipped_editor_eval(evaluation: str | Path, note: str) -> dict:
    """Add an oracle eval of the shipped editor (unchanged weights: a new setting, say) to its log
    as a row with an ``evaluation`` note, and rewrite the model card."""
    info = json.loads((SHIPPED_EDITOR / "editsynth_train.json").read_text())
    row = {"step": info["steps"], "evaluation": note, **_oracle_row(evaluation)}
    _log("editor", row)
    return row

"""Train the InstructPix2Pix editor: an accelerate-native loop, resumable, optionally on Ray Train.

One process by default; ``accelerate launch`` or Ray Train (``--num-workers``/``--ray-address``,
one worker per GPU) run the same loop in several. The output folder is, at the end, a
standard diffusers StableDiffusionInstructPix2PixPipeline directory (EMA weights), plus:

  checkpoints/checkpoint-<step>/   accelerate state (UNet, optimizer, EMA, LR schedule, RNG)
                                   + trainer_state.json written last (= complete); keep-last-k
  logs/train_log.jsonl             step, loss, lr, samples/s      (TensorBoard on request)
  logs/samples/step-<step>.png     input | edit | target grids
  editsynth_train.json             how the editor was made (base, data + the shards it matched, steps,
                                   device, time, config)

Re-running the same command after a crash (even SIGKILL) resumes from the last complete
checkpoint and sees the same data in the same order as the uninterrupted run would.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from datagen.config import TrainConfig
from model.editor.loading import encode_text, tokenize

from . import data as editdata
from . import objective

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
TRAIN_INFO_FILE = "editsynth_train.json"


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    final_loss: float | None
    seconds: float
    resumed_from: int
    world_size: int
    device: str


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------
def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (their state file exists), oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).exists()]
    return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _save_checkpoint(accelerator, out: Path, step: int, state: dict, keep: int) -> None:
    """All processes write accelerate state into a temporary folder; rank 0 marks it complete."""
    root = out / "checkpoints"
    tmp = root / f".incomplete-{step:07d}"
    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved %s", final)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------
class TrainLog:
    """Plain-file log (JSON lines) on the main process; TensorBoard through accelerate if asked."""

    def __init__(self, accelerator, out: Path, resumed_step: int, tensorboard: bool):
        self.accelerator, self.tensorboard = accelerator, tensorboard
        self.path = out / "logs" / "train_log.jsonl"
        if accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # drop what the crashed run logged after its last checkpoint
                kept = [ln for ln in self.path.read_text().splitlines()
                        if ln.strip() and json.loads(ln)["step"] <= resumed_step]
                self.path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, row: dict) -> None:
        if self.tensorboard:
            self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def read_log(out: str | Path) -> list[dict]:
    path = Path(out) / "logs" / "train_log.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def _save_sample_grid(parts, unet, ema, examples, cfg: TrainConfig, path: Path, device) -> None:
    """Edit a few fixed examples with the current (EMA) weights: input | edit | target rows."""
    from PIL import Image

    from model.editor.sampling import edit_batch

    params = list(unet.parameters())
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    unet.eval()
    try:
        pipe = objective.build_pipeline(parts, unet)
        inputs = [ex.input_image.resize((cfg.resolution, cfg.resolution)) for ex in examples]
        low_precision = parts.vae.dtype != torch.float32  # frozen parts in half precision
        with torch.autocast(device.type, dtype=parts.vae.dtype, enabled=low_precision):
            edits = edit_batch(pipe, inputs, [ex.instruction for ex in examples], steps=cfg.sample_steps,
                               text_guidance=cfg.eval.text_guidance_scale, image_guidance=1.5, seed=cfg.seed)
    finally:
        unet.train()
        if ema is not None:
            ema.restore(params)
    r = cfg.resolution
    grid = Image.new("RGB", (3 * r, r * len(examples)))
    for i, (ex, inp, out) in enumerate(zip(examples, inputs, edits)):
        for j, im in enumerate((inp, out, ex.edited_image.resize((r, r)))):
            grid.paste(im.resize((r, r)), (j * r, i * r))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------
def _make_optimizer(cfg: TrainConfig, params, on_cuda: bool):
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise RuntimeError("train.use_8bit_adam=true needs bitsandbytes (pip install bitsandbytes)") from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, fused=on_cuda or None, **kwargs)


def _make_accelerator(cfg: TrainConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    on_cpu = not torch.cuda.is_available()
    if on_cpu and cfg.mixed_precision == "fp16":
        raise ValueError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    log_with = None
    if cfg.log_with == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise RuntimeError("train.log_with=tensorboard needs tensorboard (pip install tensorboard)")
        log_with = "tensorboard"
    # cpu=True on a CPU machine lets accelerate join a gloo process group (Ray Train on CPU).
    return Accelerator(cpu=on_cpu, mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_steps=cfg.gradient_accumulation_steps, log_with=log_with,
                       project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))


def train_process(cfg: TrainConfig, out: str | Path, command: str | None = None) -> TrainResult:
    """Run (or resume) training in this process; under accelerate/Ray each process calls this.

    ``command``: how the user started the run, for the model card (default: this process's argv).
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    out = Path(out)
    started = time.time()
    accelerator = _make_accelerator(cfg, out)
    device = accelerator.device
    if device.type == "cuda" and cfg.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)

    source = editdata.open_source(cfg.data, cfg.split)  # fail on bad data before loading models
    num_pairs = editdata.count_pairs(source)
    if num_pairs is not None and num_pairs < cfg.min_pairs:
        raise editdata.DataError(f"{cfg.data} holds {num_pairs} {cfg.split} pairs, fewer than train.min_pairs="
                                 f"{cfg.min_pairs}: nothing was trained")
    parts = objective.load_parts(cfg.base_model)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae = objective.freeze(parts.vae).to(device, weight_dtype)
    text_encoder = objective.freeze(parts.text_encoder).to(device, weight_dtype)
    unet = parts.unet.to(device)
    unet.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if device.type == "cuda":
        unet.to(memory_format=torch.channels_last)

    optimizer = _make_optimizer(cfg, unet.parameters(), device.type == "cuda")
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_steps)
    ema = None
    if cfg.use_ema:
        ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, foreach=True)
        ema.to(device)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    # Not prepared: accelerate would step the LR schedule once per process per step.
    accelerator.register_for_checkpointing(lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    step, resumed_from = 0, 0
    # Training time and the last logged loss travel in every checkpoint, so a killed run's
    # time is not lost and a resume with nothing left to do still reports them.
    seconds_before, last_loss = 0.0, None
    checkpoints = list_checkpoints(out)
    if checkpoints:
        ckpt = checkpoints[-1]
        accelerator.load_state(str(ckpt))
        state = json.loads((ckpt / STATE_FILE).read_text())
        step = resumed_from = state["step"]
        info = out / TRAIN_INFO_FILE   # checkpoints of older versions carry no time: the last finished run's
        before = json.loads(info.read_text()).get("seconds_total", 0.0) if info.exists() else 0.0
        seconds_before, last_loss = state.get("seconds_total", before), state.get("loss")
        now = (accelerator.num_processes, cfg.batch_size, cfg.gradient_accumulation_steps)
        was = (state.get("world_size"), state.get("batch_size"), state.get("gradient_accumulation_steps"))
        if now != was:
            log.warning("resuming %s with processes x batch x accumulation %s (was %s): the data order "
                        "will differ from the uninterrupted run", ckpt, now, was)
        log.info("resumed from %s (step %d)", ckpt, step)

    stream = editdata.EditPairStream(
        source, cfg.resolution, seed=cfg.seed, rank=accelerator.process_index,
        world_size=accelerator.num_processes, shuffle_buffer=cfg.shuffle_buffer, random_flip=cfg.random_flip,
        flip_swap_words=cfg.flip_swap_words,
        center_crop=cfg.center_crop, batch_size=cfg.batch_size,
        skip_batches=step * cfg.gradient_accumulation_steps)
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size, collate_fn=editdata.collate,
                                         num_workers=cfg.dataloader_workers,
                                         persistent_workers=cfg.dataloader_workers > 0)

    null_text = encode_text(text_encoder, parts.tokenizer, [""], device)  # null text = encoding of ""
    train_log = TrainLog(accelerator, out, resumed_from, cfg.log_with == "tensorboard")
    if cfg.log_with == "tensorboard":
        accelerator.init_trackers("editor", config={k: v for k, v in cfg.model_dump().items()
                                                    if isinstance(v, (int, float, str, bool))})
    sample_examples = []
    if accelerator.is_main_process and cfg.num_sample_images:
        sample_examples = editdata.load_examples(cfg.data, cfg.split, cfg.num_sample_images, cfg.seed)

    log.info("training %s from %s on %s pairs: %d process(es) x batch %d x accumulation %d, steps %d -> %d, %s",
             out, parts.source, "?" if num_pairs is None else num_pairs, accelerator.num_processes, cfg.batch_size,
             cfg.gradient_accumulation_steps, step, cfg.max_steps, device)
    loss_sum = torch.zeros((), device=device)
    loss_count, window_start, window_samples = 0, time.time(), 0
    batches = iter(loader)
    while step < cfg.max_steps:
        batch = next(batches)
        with accelerator.accumulate(unet):
            inputs = objective.LossInputs(batch["original"], batch["edited"],
                                       tokenize(parts.tokenizer, batch["instructions"]), batch["seeds"])
            loss = objective.editor_loss(unet, vae, text_encoder, parts.noise_scheduler, null_text, inputs,
                                      cfg.conditioning_dropout_text, cfg.conditioning_dropout_image,
                                      cfg.conditioning_dropout_both, weight_dtype, cfg.snr_gamma,
                                      cfg.timestep_sampling)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        loss_count += 1
        window_samples += len(batch["seeds"]) * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        lr_scheduler.step()
        if ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        step += 1

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            last_loss = accelerator.reduce(loss_sum / loss_count, "mean").item()
            now = time.time()
            train_log.write({"step": step, "loss": last_loss, "lr": lr_scheduler.get_last_lr()[0],
                             "samples_per_s": window_samples / max(now - window_start, 1e-9)})
            loss_sum.zero_()
            loss_count, window_start, window_samples = 0, now, 0
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            _save_checkpoint(accelerator, out, step, {
                "step": step, "world_size": accelerator.num_processes, "batch_size": cfg.batch_size,
                "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "loss": last_loss,
                "seconds_total": seconds_before + time.time() - started,
            }, cfg.keep_checkpoints)
        if sample_examples and (step % cfg.sample_every == 0 or step == cfg.max_steps):
            _save_sample_grid(parts, accelerator.unwrap_model(unet), ema, sample_examples, cfg,
                              out / "logs" / "samples" / f"step-{step:07d}.png", device)

    accelerator.wait_for_everyone()
    seconds = time.time() - started
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.copy_to(final_unet.parameters())
        final_unet = final_unet.to(torch.float32, memory_format=torch.contiguous_format)
        parts.vae, parts.text_encoder = parts.vae.float(), parts.text_encoder.float()
        objective.save_pipeline(parts, out, final_unet)
        info = {
            "base_model": cfg.base_model, "base_source": parts.source, "data": cfg.data, "split": cfg.split,
            # what a pattern matched when it ran: the same pattern matches more once more runs exist
            "data_shards": source.shards if isinstance(source, editdata.WebdatasetSource) else None,
            "data_pairs": num_pairs,   # None when the shards are remote
            "steps": step, "final_loss": last_loss, "resumed_from": resumed_from, "device": str(device),
            "world_size": accelerator.num_processes,
            "seconds_total": seconds_before + seconds,
            "effective_batch": cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes,
            **lineage(parts.source, cfg.base_model),
            "config": cfg.model_dump(),
        }
        (out / TRAIN_INFO_FILE).write_text(json.dumps(info, indent=1))
        _write_model_card(out, cfg, command or _command_line(), step, last_loss, str(device),
                          accelerator.num_processes, seconds_before + seconds, info.get("retrained_from"),
                          info["data_shards"], num_pairs)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(str(out), step, last_loss, seconds, resumed_from, accelerator.num_processes, str(device))


def lineage(base_source: str, base_model: str) -> dict:
    """Where an editor comes from when its base is itself an editor (retraining on new data):
    ``sd_base_model``, the Stable Diffusion at the root of the chain (SDEdit's baseline), and
    ``retrained_from``, the base editor's own record without its config. Published editors are
    overwritten in place, so the chain is copied here rather than pointed to."""
    prior_path = Path(base_source) / TRAIN_INFO_FILE
    if not prior_path.exists():
        return {"sd_base_model": base_model}
    prior = json.loads(prior_path.read_text())
    prior.pop("config", None)
    return {"sd_base_model": sd_base_model(prior, base_model), "retrained_from": prior}


def sd_base_model(record: dict, fallback: str | None = None) -> str | None:
    """The Stable Diffusion an editor record descends from (records before lineage: its base)."""
    return record.get("sd_base_model", record.get("base_model", fallback))


def chain_totals(info: dict) -> tuple[int, float]:
    """Steps and seconds of an editor summed over its whole retraining chain."""
    steps, seconds = 0, 0.0
    while info:
        steps += info.get("steps", 0)
        seconds += info.get("seconds_total", 0.0)
        info = info.get("retrained_from")
    return steps, seconds


def _command_line() -> str:
    import shlex
    import sys

    return " ".join(shlex.quote(a) for a in sys.argv) if sys.argv and sys.argv[0] else "(library call)"


def shard_folders(shards: list[str]) -> list[str]:
    """The folders a shard pattern's matches lie in: one per dataset run, the unit people name."""
    return sorted({str(Path(s).parent) for s in shards})


def _write_model_card(out: Path, cfg: TrainConfig, command: str, steps: int, loss, device: str, world: int,
                      seconds: float, retrained_from: dict | None = None, data_shards: list[str] | None = None,
                      data_pairs: int | None = None) -> None:
    """README.md of the editor directory: how it was made, so it can be made again."""
    eff = cfg.batch_size * cfg.gradient_accumulation_steps * world
    matched = ""
    if data_shards and editdata.is_shard_pattern(cfg.data):
        folders = shard_folders(data_shards)
        matched = (f"\nThe data pattern matched {len(data_shards)} shard(s) in {len(folders)} folder(s) "
                   f"(every shard: `editsynth_train.json`, key `data_shards`):\n\n"
                   + "".join(f"- `{f}`\n" for f in folders))
    before = ""
    if retrained_from:
        prior_steps, prior_seconds = chain_totals(retrained_from)
        before = (f"\nThe base is itself an editor (retraining on new data): before this run it had trained "
                  f"{prior_steps} steps in {prior_seconds / 60:.1f} min, from `{sd_base_model(retrained_from)}` "
                  f"(the chain is in `editsynth_train.json`, key `retrained_from`).\n")
    (out / "README.md").write_text(
        "---\nlibrary_name: diffusers\npipeline_tag: image-to-image\ntags: [instruct-pix2pix, editsynth]\n---\n"
        f"# InstructPix2Pix editor trained with editsynth\n\n"
        f"Load with `StableDiffusionInstructPix2PixPipeline.from_pretrained(<this folder>)`.\n\n"
        f"| | |\n|---|---|\n| base model | `{cfg.base_model}` |\n| data | `{cfg.data}` (split `{cfg.split}`"
        f"{'' if data_pairs is None else f', {data_pairs} pairs'}) |\n"
        f"| steps | {steps} |\n| effective batch | {eff} ({world} process(es) x {cfg.batch_size} x "
        f"{cfg.gradient_accumulation_steps} accumulation) |\n| resolution | {cfg.resolution} |\n"
        f"| learning rate | {cfg.learning_rate} |\n| EMA | {cfg.ema_decay if cfg.use_ema else 'off'} |\n"
        f"| conditioning dropout (text / image / both) | {cfg.conditioning_dropout_text} / "
        f"{cfg.conditioning_dropout_image} / {cfg.conditioning_dropout_both} |\n"
        f"| final loss | {loss if loss is None else round(loss, 5)} |\n| device | {device} |\n"
        f"| training time | {seconds / 60:.1f} min |\n{matched}{before}\nCommand:\n\n```\n{command}\n```\n\n"
        "Full configuration: `editsynth_train.json`.\n")


# ---------------------------------------------------------------------------------------
# Ray Train
# ---------------------------------------------------------------------------------------
def _ray_worker(config: dict) -> None:
    train_process(TrainConfig.model_validate(config["cfg"]), config["out"], config["command"])


def _absolute_if_local(path: str) -> str:
    """A path that exists here, or a relative shard pattern (``*``, ``?``, ``{a,b}``), made
    absolute; anything else (hub ids, `shapes`) unchanged."""
    if path and Path(path).exists():
        return str(Path(path).resolve())
    if path and editdata.is_shard_pattern(path) and not os.path.isabs(path):
        return os.path.join(os.getcwd(), path)
    return path


def train_on_ray(cfg: TrainConfig, out: str | Path, num_workers: int, ray_address: str | None = None,
                 use_gpu: bool | None = None) -> TrainResult:
    """The same loop on Ray Train's TorchTrainer: one worker per GPU (or CPU workers)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(out).resolve()
    # Ray workers run in their own working folders: local paths must not stay relative.
    cfg = cfg.model_copy(update={"data": _absolute_if_local(cfg.data), "base_model": _absolute_if_local(cfg.base_model)})
    if not ray.is_initialized():
        repo = str(Path(__file__).resolve().parents[2])   # the folder that holds the model package
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}}
        if ray_address:
            ray.init(address=ray_address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=False, runtime_env=runtime_env,
                     _node_ip_address="127.0.0.1")
    if use_gpu is None:
        use_gpu = cfg.resources.num_gpus > 0
    resources = {"CPU": cfg.resources.num_cpus}
    if use_gpu:
        resources["GPU"] = max(1.0, cfg.resources.num_gpus)
    started = time.time()
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": cfg.model_dump(), "out": str(out), "command": _command_line()},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(storage_path=str(out / "ray"), name="train"),
    )
    trainer.fit()  # raises if a worker failed
    info = json.loads((out / TRAIN_INFO_FILE).read_text())
    return TrainResult(str(out), info["steps"], info["final_loss"], time.time() - started,
                       info["resumed_from"], info["world_size"], info["device"])


def train(cfg: TrainConfig, out: str | Path, num_workers: int | None = None,
          ray_address: str | None = None) -> TrainResult:
    """Train in this process, or on Ray Train when ``num_workers``/``ray_address`` is given."""
    if num_workers or ray_address:
        return train_on_ray(cfg, out, num_workers or cfg.resources.actors, ray_address)
    return train_process(cfg, out)

"""The training loop: loss falls, the output loads in diffusers, resume after SIGKILL, Ray Train."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datagen.config import load_config
from model.training import loop as T
from tests.model.train_helpers import shapes_pairs, tiny_train_overrides, write_shards

pytestmark = pytest.mark.usefixtures("one_thread")


REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_shards(root, shapes_pairs(16, seed=0), num_shards=1)
    return root


def _overrides(tiny_sd_dir, pairs_dir, **extra) -> list[str]:
    return tiny_train_overrides(**{"train.base_model": tiny_sd_dir, "train.data": pairs_dir, **extra})


def _cfg(tiny_sd_dir, pairs_dir, **extra):
    return load_config("shapes", _overrides(tiny_sd_dir, pairs_dir, **extra)).train


def _unet_state(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


def test_loss_falls_on_a_small_fixed_set_and_diffusers_loads_the_editor(tmp_path, tiny_sd_dir, pairs_dir):
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    cfg = _cfg(tiny_sd_dir, pairs_dir, **{
        "train.max_steps": 200, "train.batch_size": 4, "train.checkpoint_every": 50, "train.keep_checkpoints": 2,
        "train.log_every": 10, "train.num_sample_images": 2, "train.sample_every": 200, "train.sample_steps": 3})
    result = T.train(cfg, tmp_path / "run")
    assert result.steps == 200 and result.world_size == 1

    losses = [row["loss"] for row in T.read_log(tmp_path / "run")]
    assert len(losses) == 20
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < 0.5 * first, losses
    assert [p.name for p in T.list_checkpoints(tmp_path / "run")] == ["checkpoint-0000150", "checkpoint-0000200"]
    assert (tmp_path / "run" / "logs" / "samples" / "step-0000200.png").exists()
    info = json.loads((tmp_path / "run" / T.TRAIN_INFO_FILE).read_text())
    assert info["steps"] == 200 and info["base_model"] == str(tiny_sd_dir) and info["effective_batch"] == 4
    assert "| steps | 200 |" in (tmp_path / "run" / "README.md").read_text()

    # A standard diffusers directory: diffusers alone loads and runs it.
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "run", safety_checker=None)
    assert pipe.unet.config.in_channels == 8
    image = Image.new("RGB", (32, 32), "white")
    out = pipe("make the background blue", image=image, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(out)).all()


def test_a_cosine_learning_rate_warms_up_then_decays_to_zero_at_max_steps(tmp_path, tiny_sd_dir, pairs_dir):
    cfg = _cfg(tiny_sd_dir, pairs_dir, **{
        "train.max_steps": 8, "train.batch_size": 2, "train.lr_warmup_steps": 2, "train.lr_scheduler": "cosine",
        "train.learning_rate": 1e-3, "train.log_every": 1, "train.num_sample_images": 0, "train.use_ema": False})
    T.train(cfg, tmp_path / "run")
    lrs = [row["lr"] for row in T.read_log(tmp_path / "run")]
    assert len(lrs) == 8 and max(lrs) == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))  # decays after warm-up ...
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)       # ... to zero exactly at max_steps


def test_a_shard_pattern_is_recorded_with_the_shards_it_matched(tmp_path, tiny_sd_dir, monkeypatch):
    from shapes_lab import train as shapes_train

    # Two runs match the pattern and one does not; later runs would match it too, so the
    # record keeps what it matched when the editor trained.
    for run, seed in (("data1", 1), ("data2", 2), ("other", 3)):
        write_shards(tmp_path / run / "train", shapes_pairs(4, seed=seed), num_shards=2 if seed == 2 else 1)
    pattern = str(tmp_path / "data*" / "train" / "*.tar")
    overrides = {"train.max_steps": 1, "train.batch_size": 2, "train.num_sample_images": 0, "train.use_ema": False}
    # A floor on the pairs (a retrain that must read more than its base did) refuses before any work.
    from model.training.data import DataError

    with pytest.raises(DataError, match="holds 8 train pairs, fewer than train.min_pairs=9"):
        T.train(_cfg(tiny_sd_dir, pattern, **overrides, **{"train.min_pairs": 9}), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()

    T.train(_cfg(tiny_sd_dir, pattern, **overrides, **{"train.min_pairs": 8}), tmp_path / "run")
    info = json.loads((tmp_path / "run" / T.TRAIN_INFO_FILE).read_text())
    assert info["data"] == pattern and info["data_pairs"] == 8
    assert info["data_shards"] == [str(tmp_path / "data1" / "train" / "pairs-00000.tar"),
                                   str(tmp_path / "data2" / "train" / "pairs-00000.tar"),
                                   str(tmp_path / "data2" / "train" / "pairs-00001.tar")]
    card = (tmp_path / "run" / "README.md").read_text()
    assert "matched 3 shard(s) in 2 folder(s)" in card and "(split `train`, 8 pairs)" in card
    assert f"- `{tmp_path / 'data2' / 'train'}`" in card and str(tmp_path / "other") not in card

    # Publishing it as `shapes` keeps the match in the weights' log row too.
    monkeypatch.setattr(shapes_train, "SHIPPED_DIR", tmp_path / "weights")
    monkeypatch.setattr(shapes_train, "SHIPPED_EDITOR", tmp_path / "weights" / "editor")
    shapes_train.publish_editor(tmp_path / "run")
    row = json.loads((tmp_path / "weights" / "editor.log.jsonl").read_text().splitlines()[-1])
    assert row["data"] == pattern and row["data_pairs"] == 8
    assert row["data_matched"] == {"shards": 3, "folders": [str(tmp_path / "data1" / "train"),
                                                            str(tmp_path / "data2" / "train")]}


def test_resume_after_sigkill_continues_with_the_same_data_and_state(tmp_path, tiny_sd_dir, pairs_dir):
    extra = {"train.max_steps": 30, "train.checkpoint_every": 10, "train.keep_checkpoints": 5}
    cmd = [sys.executable, str(REPO / "train_editor.py"), "--pipeline", "shapes", "--out", str(tmp_path / "killed")]
    for item in _overrides(tiny_sd_dir, pairs_dir, **extra):
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600          # a guard against a hang, not a speed check: a loaded machine is slow
    first_ckpt = tmp_path / "killed" / "checkpoints" / "checkpoint-0000010"
    while not first_ckpt.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint within 600 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    killed_at = [p.name for p in T.list_checkpoints(tmp_path / "killed")]
    assert killed_at and not (tmp_path / "killed" / "model_index.json").exists()  # died mid-run

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 30 and summary["resumed_from"] >= 10
    # The killed process's training time is carried by its checkpoint, not lost with it.
    info = json.loads((tmp_path / "killed" / T.TRAIN_INFO_FILE).read_text())
    assert info["seconds_total"] > summary["seconds"] and info["final_loss"] is not None

    # The uninterrupted run of the same command, in this process.
    T.train(_cfg(tiny_sd_dir, pairs_dir, **extra), tmp_path / "straight")
    resumed, straight = _unet_state(tmp_path / "killed"), _unet_state(tmp_path / "straight")
    for name, w in straight.items():
        torch.testing.assert_close(resumed[name], w, atol=1e-6, rtol=1e-5, msg=name)
    log_resumed, log_straight = T.read_log(tmp_path / "killed"), T.read_log(tmp_path / "straight")
    assert [r["step"] for r in log_resumed] == [r["step"] for r in log_straight]  # no step logged twice
    for a, b in zip(log_resumed, log_straight):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def _relative_gap(a: dict, b: dict, start: dict) -> float:
    """|a - b| over how far training moved the weights: scale-free 'same model' measure."""
    diff = sum(((a[k] - b[k]).double() ** 2).sum() for k in a) ** 0.5
    moved = sum(((a[k] - start[k]).double() ** 2).sum() for k in a) ** 0.5
    return float(diff / moved)


def test_two_ray_train_workers_train_the_same_model_as_one_process(tmp_path, tiny_sd_dir, pairs_dir, ray_local,
                                                                  monkeypatch):
    from diffusers import UNet2DConditionModel

    from model.training.objective import widen_conv_in

    extra = {"train.max_steps": 5, "train.checkpoint_every": 5, "train.log_every": 1, "train.use_ema": False}
    one = T.train(_cfg(tiny_sd_dir, pairs_dir, **{**extra, "train.batch_size": 8}), tmp_path / "one")
    # Relative local paths and shard patterns, as people type them: Ray workers run in other
    # folders and must still find the data and the base model.
    monkeypatch.chdir(tmp_path)
    two = T.train(_cfg(os.path.relpath(tiny_sd_dir), os.path.join(os.path.relpath(pairs_dir), "*.tar"),
                       **{**extra, "train.batch_size": 4}), "two", num_workers=2)
    half = T.train(_cfg(tiny_sd_dir, pairs_dir, **{**extra, "train.batch_size": 4}), tmp_path / "half")
    assert two.world_size == 2 and two.steps == 5
    info = json.loads((tmp_path / "two" / T.TRAIN_INFO_FILE).read_text())
    assert info["world_size"] == 2 and info["effective_batch"] == 8

    start = {k: v for k, v in widen_conv_in(
        UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")).state_dict().items()}
    w_one, w_two, w_half = (_unet_state(tmp_path / n) for n in ("one", "two", "half"))
    assert _relative_gap(w_two, w_one, start) < 0.02
    assert _relative_gap(w_half, w_one, start) > 0.2   # a different batch is a different model
    for a, b in zip(T.read_log(tmp_path / "two"), T.read_log(tmp_path / "one")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


def test_a_trained_editor_is_published_as_shapes_with_its_oracle_figures(tmp_path, tiny_sd_dir, pairs_dir,
                                                                         monkeypatch):
    from safetensors.torch import load_file

    from datagen.shapes import models
    from model.editor.loading import load_editor
    from model.evaluation import oracle, sdedit
    from shapes_lab import train as shapes_train

    cfg = _cfg(tiny_sd_dir, pairs_dir, **{"train.max_steps": 3, "train.batch_size": 2, "train.num_sample_images": 0})
    T.train(cfg, tmp_path / "run")
    eval_cfg = load_config("shapes", ["train.eval.oracle_num_scenes=2", "train.eval.steps=2"]).train.eval
    figures = oracle.evaluate_oracle(str(tmp_path / "run"), eval_cfg, tmp_path / "eval", base_model=str(tiny_sd_dir))

    shipped = tmp_path / "weights"
    monkeypatch.setattr(shapes_train, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(shapes_train, "SHIPPED_EDITOR", shipped / "editor")
    monkeypatch.setattr(models, "SHIPPED_EDITOR", shipped / "editor")
    shapes_train.publish_editor(tmp_path / "run", tmp_path / "eval")

    unet = load_file(str(shipped / "editor" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in unet.values()} == {torch.float16}          # small to ship
    assert "| steps | 3 |" in (shipped / "editor" / "README.md").read_text()
    for config in (shipped / "editor").rglob("*.json"):          # no path of this machine shipped
        assert "_name_or_path" not in json.loads(config.read_text()), config
    row = json.loads((shipped / "editor.log.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 3 and row["device"] == "cpu"
    assert "data_matched" not in row                                   # a folder, not a pattern
    assert row["edit_accuracy"] == round(figures["edit_accuracy"], 4)
    assert row["sdedit_preservation"] == round(figures["sdedit_preservation"], 4)
    assert row["settings"].endswith(", sampler EulerAncestralDiscreteScheduler")   # how it was edited
    best = max(figures["image_guidance_sweep"], key=lambda p: p["edit_correct"])
    assert row["sweep_best"].startswith(f"s_T {best['text_guidance_scale']} / s_I {best['image_guidance_scale']}:")
    assert load_editor("shapes", device="cpu") is not None             # `shapes` now resolves to it
    with pytest.raises(FileNotFoundError, match="not a finished"):
        shapes_train.publish_editor(tmp_path / "eval")

    # Tuned to its own guidance, the shipped one is judged again and logged as an evaluation.
    (shipped / "editor" / "edit_config.json").write_text('{"text_guidance": 6.0, "image_guidance": 3.0}')
    oracle.evaluate_oracle("shapes", eval_cfg, tmp_path / "tuned", base_model=str(tiny_sd_dir))
    row = shapes_train.log_shipped_editor_eval(tmp_path / "tuned", "at its own guidance")
    logged = json.loads((shipped / "editor.log.jsonl").read_text().splitlines()[-1])
    assert logged == {"time": logged["time"], **row}
    assert row["step"] == 3 and row["evaluation"] == "at its own guidance"
    assert "text/image guidance 6.0/3.0 (its edit_config.json)" in row["settings"]

    # Retraining the shipped editor on more data: the new one records its chain, SDEdit still
    # compares against the Stable Diffusion at the root, and publishing it (over its own base)
    # keeps the whole history.
    cfg = _cfg(tiny_sd_dir, pairs_dir, **{"train.base_model": shipped / "editor", "train.max_steps": 2,
                                          "train.batch_size": 2, "train.num_sample_images": 0})
    T.train(cfg, tmp_path / "again")
    info = json.loads((tmp_path / "again" / T.TRAIN_INFO_FILE).read_text())
    assert info["sd_base_model"] == str(tiny_sd_dir) and info["retrained_from"]["steps"] == 3
    assert sdedit.base_model_of(str(tmp_path / "again"), "fallback") == str(tiny_sd_dir)
    assert "trained 3 steps" in (tmp_path / "again" / "README.md").read_text()
    shapes_train.publish_editor(tmp_path / "again")
    row = json.loads((shipped / "editor.log.jsonl").read_text().splitlines()[-1])
    assert (row["step"], row["retrained_from_steps"], row["total_steps"]) == (2, 3, 5)
    assert not (shipped / "editor" / "edit_config.json").exists()     # the old one's tuning is not the new one's
    assert sdedit.base_model_of("shapes", "fallback") == str(tiny_sd_dir)


def test_an_editor_adopts_the_decoder_of_a_decoder_only_fine_tune_and_refuses_another_vae(tmp_path, tiny_editor_dir):
    import shutil

    from diffusers import AutoencoderKL

    from shapes_lab import train as shapes_train

    editor_dir = tmp_path / "editor"
    shutil.copytree(tiny_editor_dir, editor_dir)
    vae = AutoencoderKL.from_pretrained(editor_dir / "vae")
    with torch.no_grad():                                  # a "decoder-only fine-tune": new decoder
        for name, p in vae.named_parameters():
            if name.startswith("decoder."):
                p.add_(0.01)
    vae.save_pretrained(tmp_path / "tuned")
    shapes_train.adopt_decoder(editor_dir, tmp_path / "tuned")
    adopted = AutoencoderKL.from_pretrained(editor_dir / "vae").state_dict()
    assert all(torch.equal(adopted[k], v) for k, v in vae.state_dict().items())
    assert "_name_or_path" not in json.loads((editor_dir / "vae" / "config.json").read_text())

    with torch.no_grad():                                  # another encoder: latents would not fit
        vae.encoder.conv_in.weight.add_(0.01)
    vae.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="encodes differently"):
        shapes_train.adopt_decoder(editor_dir, tmp_path / "other")
    assert all(torch.equal(AutoencoderKL.from_pretrained(editor_dir / "vae").state_dict()[k], v)
               for k, v in adopted.items())              # the refused VAE changed nothing

"""The GPU training path against the CPU one: same model, same batch, same per-sample draws.

Runs only where CUDA is visible (CI has none; a lent GPU machine runs it). The draws are keyed by
per-sample seeds on CPU generators, so CPU and GPU see identical noise, timesteps and dropout:
any difference is arithmetic. fp32 must agree closely; fp16 / bf16 mixed precision (frozen VAE and
text encoder in half precision, UNet under autocast, channels-last, as model.training.loop runs it) within
the rounding of half precision.
"""
from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _parts():
    from datagen.shapes.models import (T2I_PRESETS, build_scheduler, build_text_encoder, build_tokenizer,
                                       build_unet, build_vae)
    from model.editor import loading
    from model.training import objective as editor

    p = T2I_PRESETS["shapes"]
    torch.manual_seed(0)
    vae, text_encoder, tokenizer = build_vae(p), build_text_encoder(p), build_tokenizer(p.context_length)
    unet = editor.widen_conv_in(build_unet(p))
    # widen_conv_in zeroes the image channels' weights; give them values so the condition matters.
    with torch.no_grad():
        unet.conv_in.weight.normal_(0, 0.05)
    g = torch.Generator().manual_seed(1)
    n, size = 8, p.image_size
    batch = editor.LossInputs(torch.rand(n, 3, size, size, generator=g) * 2 - 1,
                              torch.rand(n, 3, size, size, generator=g) * 2 - 1,
                              loading.tokenize(tokenizer, ["make the left circle red"] * n), list(range(100, 100 + n)))
    return vae, text_encoder, tokenizer, unet, build_scheduler(), batch


def _loss_and_grad(parts, device: str, precision: str):
    from model.editor import loading
    from model.editor.loading import resolve_dtype
    from model.training import objective as editor

    vae, text_encoder, tokenizer, unet, sched, batch = parts
    dtype = resolve_dtype(precision, torch.device(device))
    vae = editor.freeze(copy.deepcopy(vae)).to(device, dtype)
    text_encoder = editor.freeze(copy.deepcopy(text_encoder)).to(device, dtype)
    unet = copy.deepcopy(unet).to(device).train()
    if device == "cuda":
        unet.to(memory_format=torch.channels_last)
    null_text = loading.encode_text(text_encoder, tokenizer, [""], torch.device(device))
    with torch.autocast(device, dtype=dtype, enabled=precision != "fp32"):
        loss = editor.editor_loss(unet, vae, text_encoder, sched, null_text, batch, 0.05, 0.05, 0.05, dtype,
                                  snr_gamma=5.0)
    loss.backward()
    grad = torch.cat([p.grad.detach().double().flatten().cpu() for p in unet.parameters()])
    return loss.item(), grad


@pytest.fixture(scope="module")
def cpu_reference():
    parts = _parts()
    return parts, _loss_and_grad(parts, "cpu", "fp32")


# Measured on an H200 (torch 2.11, 2026-11-30): fp32 equal to 6 digits, cosine 1.000000; fp16
# |d loss| 1e-5, cosine 0.99999; bf16 5e-5, cosine 0.99974. The bounds leave room for other GPUs.
@pytest.mark.parametrize("precision, loss_rtol, min_cosine", [("fp32", 1e-4, 0.9999), ("fp16", 2e-3, 0.999),
                                                             ("bf16", 5e-3, 0.995)])
def test_cuda_training_loss_and_gradient_match_cpu(cpu_reference, precision, loss_rtol, min_cosine):
    parts, (cpu_loss, cpu_grad) = cpu_reference
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        loss, grad = _loss_and_grad(parts, "cuda", precision)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    cosine = torch.nn.functional.cosine_similarity(grad, cpu_grad, dim=0).item()
    print(f"{precision}: loss cpu {cpu_loss:.6f} cuda {loss:.6f}; gradient cosine {cosine:.6f}")
    assert loss == pytest.approx(cpu_loss, rel=loss_rtol)
    assert cosine >= min_cosine

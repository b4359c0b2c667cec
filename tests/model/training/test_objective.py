"""The editor set-up and objective: 8-channel init, conditioning dropout, what the UNet is fed."""
from __future__ import annotations

import copy

import pytest
import torch

from model.editor import loading
from model.training import objective as editor

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def tiny_parts(tiny_sd_dir):
    return editor.load_parts(str(tiny_sd_dir))


def test_widened_unet_with_zero_image_latent_gives_exactly_the_base_output(tiny_sd_dir, tiny_parts):
    from diffusers import UNet2DConditionModel

    base = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet").eval()
    wide = tiny_parts.unet.eval()
    assert base.config.in_channels == 4 and wide.config.in_channels == 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 16, 16, generator=g)
    t = torch.tensor([1, 400, 999])
    text = torch.randn(3, 32, base.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        expected = base(x, t, text).sample
        got = wide(torch.cat([x, torch.zeros_like(x)], 1), t, text).sample
    assert torch.equal(got, expected)
    assert torch.equal(wide.conv_in.weight[:, :4], base.conv_in.weight)
    assert torch.count_nonzero(wide.conv_in.weight[:, 4:]) == 0
    # The new channels are live: training gives their zero weights a gradient.
    wide(torch.cat([x, torch.randn_like(x)], 1), t, text).sample.square().mean().backward()
    assert wide.conv_in.weight.grad[:, 4:].abs().sum() > 0
    wide.zero_grad(set_to_none=True)


def test_widening_an_existing_editor_keeps_it_as_it_is(tiny_parts):
    unet = copy.deepcopy(tiny_parts.unet)
    weight = unet.conv_in.weight.clone()
    assert editor.widen_conv_in(unet) is unet
    assert torch.equal(unet.conv_in.weight, weight)


def test_conditioning_dropout_drops_five_percent_text_image_and_both():
    draws = editor.draw_samples(list(range(40_000)), (1, 1, 1), 1000)
    drop_text, drop_image = editor.dropout_masks(draws.u, 0.05, 0.05, 0.05)
    n = len(draws.u)
    text_only = (drop_text & ~drop_image).sum().item() / n
    image_only = (drop_image & ~drop_text).sum().item() / n
    both = (drop_text & drop_image).sum().item() / n
    for share in (text_only, image_only, both):
        assert share == pytest.approx(0.05, abs=0.006)   # 40k draws: sd 0.0011
    assert (~drop_text & ~drop_image).sum().item() / n == pytest.approx(0.85, abs=0.01)


def test_dropout_masks_follow_their_probabilities_when_they_differ():
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(1))
    drop_text, drop_image = editor.dropout_masks(u, 0.1, 0.2, 0.0)
    assert (drop_text & drop_image).sum() == 0
    assert drop_text.float().mean().item() == pytest.approx(0.1, abs=0.005)
    assert drop_image.float().mean().item() == pytest.approx(0.2, abs=0.005)


def test_cubic_timestep_sampling_favours_the_noisiest_steps_and_uniform_is_unchanged():
    seeds = list(range(20_000))
    uniform = editor.draw_samples(seeds, (1, 1, 1), 1000).timesteps
    cubic = editor.draw_samples(seeds, (1, 1, 1), 1000, "cubic").timesteps
    # uniform: what it drew before the option existed (one dropout draw, then randint)
    g = torch.Generator().manual_seed(3)
    torch.rand((), generator=g)
    assert uniform[3] == torch.randint(0, 1000, (), generator=g)
    assert (uniform >= 800).float().mean().item() == pytest.approx(0.2, abs=0.015)
    # cubic: P(t >= 0.8 T) = 0.2 ** (1/3) = 0.585, mean (1 - 1/4) T, all within [0, T)
    assert (cubic >= 800).float().mean().item() == pytest.approx(0.585, abs=0.015)
    assert cubic.float().mean().item() == pytest.approx(749.5, abs=6)
    assert cubic.min() >= 0 and cubic.max() <= 999
    # the dropout draw comes first, so conditioning dropout is the same under either sampling
    a, b = editor.draw_samples(seeds[:4], (4, 2, 2), 1000), editor.draw_samples(seeds[:4], (4, 2, 2), 1000, "cubic")
    assert torch.equal(a.u, b.u)
    with pytest.raises(ValueError, match="timestep sampling 'loglinear'"):
        editor.draw_samples(seeds[:1], (1, 1, 1), 1000, "loglinear")


def test_the_loss_feeds_the_unet_the_timesteps_of_its_sampling(tiny_parts):
    vae, te = editor.freeze(tiny_parts.vae), editor.freeze(tiny_parts.text_encoder)
    null = loading.encode_text(te, tiny_parts.tokenizer, [""])
    batch = _batch(tiny_parts, n=16, seed=2)
    rec = _Recorder()
    editor.editor_loss(rec, vae, te, tiny_parts.noise_scheduler, null, batch, .05, .05, .05,
                       timestep_sampling="cubic")
    expected = editor.draw_samples(batch.seeds, (4, 16, 16), 1000, "cubic").timesteps
    assert torch.equal(rec.calls[0][1], expected)
    assert not torch.equal(expected, editor.draw_samples(batch.seeds, (4, 16, 16), 1000).timesteps)


class _Recorder(torch.nn.Module):
    """Stands in for the UNet: records what the loss feeds it, predicts zeros."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, sample, timestep, encoder_hidden_states):
        from types import SimpleNamespace

        self.calls.append((sample.detach(), timestep, encoder_hidden_states.detach()))
        return SimpleNamespace(sample=sample[:, :4] * self.w)


def _batch(parts, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    instr = [f"make object {i} red" for i in range(n)]
    return editor.LossInputs(torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
                             loading.tokenize(parts.tokenizer, instr), list(range(1000, 1000 + n)))


def test_the_unet_sees_unscaled_image_latent_mode_and_null_conditions_where_dropped(tiny_parts):
    vae, te = editor.freeze(tiny_parts.vae), editor.freeze(tiny_parts.text_encoder)
    null = loading.encode_text(te, tiny_parts.tokenizer, [""])
    batch = _batch(tiny_parts)
    rec = _Recorder()
    # High dropout so that every case occurs in 64 samples.
    editor.editor_loss(rec, vae, te, tiny_parts.noise_scheduler, null, batch, 0.2, 0.2, 0.2)
    sample, _, text = rec.calls[0]
    draws = editor.draw_samples(batch.seeds, (4, 16, 16), 1000)
    drop_text, drop_image = editor.dropout_masks(draws.u, 0.2, 0.2, 0.2)
    assert drop_text.any() and drop_image.any() and (~drop_text & ~drop_image).any()
    with torch.no_grad():
        mode = vae.encode(batch.original).latent_dist.mode()
        texts = te(batch.input_ids)[0]
    image_part = sample[:, 4:]
    torch.testing.assert_close(image_part[~drop_image], mode[~drop_image], atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(image_part[drop_image]) == 0
    torch.testing.assert_close(text[drop_text], null.expand(int(drop_text.sum()), -1, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(text[~drop_text], texts[~drop_text], atol=1e-5, rtol=1e-5)
    # The noisy target: alpha * (scaled posterior sample) + sigma * noise.
    with torch.no_grad():
        post = vae.encode(batch.edited).latent_dist
    target = (post.mean + post.std * draws.posterior_eps) * vae.config.scaling_factor
    expected = tiny_parts.noise_scheduler.add_noise(target, draws.noise, draws.timesteps)
    torch.testing.assert_close(sample[:, :4], expected, atol=1e-4, rtol=1e-4)


def test_a_samples_draws_do_not_depend_on_its_batch_mates(tiny_parts):
    """What makes 2 workers x batch 4 train like 1 x batch 8: per-sample seeds, mean loss."""
    vae, te = editor.freeze(tiny_parts.vae), editor.freeze(tiny_parts.text_encoder)
    null = loading.encode_text(te, tiny_parts.tokenizer, [""])
    unet = tiny_parts.unet.eval()
    b = _batch(tiny_parts, n=8, seed=3)
    halves = [editor.LossInputs(b.original[s], b.edited[s], b.input_ids[s], b.seeds[s])
              for s in (slice(0, 4), slice(4, 8))]
    with torch.no_grad():
        whole = editor.editor_loss(unet, vae, te, tiny_parts.noise_scheduler, null, b, .05, .05, .05)
        parts = [editor.editor_loss(unet, vae, te, tiny_parts.noise_scheduler, null, h, .05, .05, .05) for h in halves]
    assert whole.item() == pytest.approx((parts[0].item() + parts[1].item()) / 2, rel=1e-5)


def test_the_vae_in_passes_gives_the_posterior_and_loss_of_one_pass(tiny_parts, monkeypatch):
    """On CPU the loss encodes in passes of CPU_VAE_PASS images (faster there): same numbers."""
    vae, te = editor.freeze(tiny_parts.vae), editor.freeze(tiny_parts.text_encoder)
    null = loading.encode_text(te, tiny_parts.tokenizer, [""])
    unet = tiny_parts.unet.eval()
    b = _batch(tiny_parts, n=8, seed=4)
    sizes = []
    real_encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda x: sizes.append(len(x)) or real_encode(x))
    with torch.no_grad():
        whole = editor.encode_posterior(vae, b.original, None)
        parts = editor.encode_posterior(vae, b.original, 3)
        assert sizes == [8, 3, 3, 2]
        torch.testing.assert_close(parts.mean, whole.mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(parts.std, whole.std, rtol=0, atol=1e-6)
        monkeypatch.setattr(editor, "CPU_VAE_PASS", 1000)
        one_pass = editor.editor_loss(unet, vae, te, tiny_parts.noise_scheduler, null, b, .05, .05, .05)
        monkeypatch.setattr(editor, "CPU_VAE_PASS", 5)
        sizes.clear()
        in_passes = editor.editor_loss(unet, vae, te, tiny_parts.noise_scheduler, null, b, .05, .05, .05)
    assert sizes == [5, 5, 5, 1]  # edited and original images together: 16
    assert in_passes.item() == pytest.approx(one_pass.item(), rel=1e-6)


def test_min_snr_weighting_reweights_each_sample_by_its_timestep(tiny_parts):
    vae, te = editor.freeze(tiny_parts.vae), editor.freeze(tiny_parts.text_encoder)
    null = loading.encode_text(te, tiny_parts.tokenizer, [""])
    unet = tiny_parts.unet.eval()
    b = _batch(tiny_parts, n=8, seed=5)
    sched = tiny_parts.noise_scheduler
    with torch.no_grad():
        plain = editor.editor_loss(unet, vae, te, sched, null, b, .05, .05, .05)
        # gamma above every SNR: all weights are 1 (epsilon prediction), the plain loss again
        huge = editor.editor_loss(unet, vae, te, sched, null, b, .05, .05, .05, snr_gamma=1e12)
        rec = _Recorder()
        editor.editor_loss(rec, vae, te, sched, null, b, .05, .05, .05)
        per_sample = []
        for i in range(8):
            one = editor.LossInputs(b.original[i:i + 1], b.edited[i:i + 1], b.input_ids[i:i + 1], b.seeds[i:i + 1])
            per_sample.append(editor.editor_loss(unet, vae, te, sched, null, one, .05, .05, .05).item())
        weighted = editor.editor_loss(unet, vae, te, sched, null, b, .05, .05, .05, snr_gamma=5.0)
    assert huge.item() == pytest.approx(plain.item(), rel=1e-5)
    t = rec.calls[0][1]
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    w = snr.clamp(max=5.0) / snr
    assert (w < 1).any()   # some draws are above gamma: the weighting is not the identity here
    expected = sum(wi * li for wi, li in zip(w.tolist(), per_sample)) / 8
    assert weighted.item() == pytest.approx(expected, rel=1e-4)


def test_a_model_that_is_not_stable_diffusion_fails_with_a_clear_error(tmp_path):
    with pytest.raises(loading.EditorLoadError, match="unet/"):
        editor.load_parts(str(tmp_path))

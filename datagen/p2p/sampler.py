"""The batched two-branch sampler: many candidates per UNet call, shared work computed once.

Latent rows: one *source* row per distinct (input caption, seed, cfg) and one *edited* row per
candidate. Every row has its own CPU generator seeded with its candidate's seed, so both
branches start from the same noise and receive the same ancestral noise, whatever else is
in the batch. The scheduler (any diffusers scheduler) steps all rows at once.

Each step the UNet sees *lanes*, not rows: every live source row, and one representative per
group of edited rows that are still identical. Edited rows of candidates that share a seed,
cfg and captions but differ in p are identical until the smallest of their shared-step counts
(attention.attention_steps); there the group forks. Classifier-free guidance is folded into
the batch: [unconditional lanes; conditional lanes].

A row whose latents turn NaN/inf is marked failed with the step, zeroed, and dropped from the
lanes; the other rows go on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from datagen.schedulers import step_kwargs

from .attention import AttentionControl, AttentionPlan


@dataclass(frozen=True)
class CandidatePlan:
    """What the sampler needs to know of one candidate."""

    seed: int
    cfg_scale: float
    source_text: int          # row of the text table with the input caption
    edited_text: int          # row of the text table with the output caption
    self_steps: int           # leading UNet evaluations whose self-attention maps come from the source row
    cross_steps: int = 0      # leading UNet evaluations whose cross-attention maps come from the source row
    alignment: int = -1       # row of the alignment tables (cross mode)


@dataclass
class SharingRules:
    """Where the mode shares maps: InstructPix2Pix shares both CFG halves at every resolution;
    Prompt-to-Prompt only the conditional half, self maps only at low resolution."""

    uncond_shares: bool = True
    self_max_tokens: int | None = None


@dataclass
class TextTable:
    """The encodings one chunk needs: row 0 is the unconditional (empty) caption."""

    embeddings: torch.Tensor                   # (T, S, D) on the UNet's device and dtype
    value_maps: torch.Tensor | None = None     # (A, S, S) alignment mapper * re-weighting
    own_scales: torch.Tensor | None = None     # (A, S) (1 - alphas) * re-weighting


@dataclass
class SampleResult:
    source_latents: torch.Tensor               # (n_sources, C, h, w) float32
    edited_latents: torch.Tensor               # (n_candidates, C, h, w) float32
    source_of: list[int]                       # candidate -> its source row
    edited_twin: list[int]                     # candidate -> first candidate with the same final edited row
    failures: dict[int, str] = field(default_factory=dict)   # candidate -> reason
    unet_calls: int = 0
    unet_rows: int = 0                         # rows through the UNet, CFG halves counted
    unet_seconds: float = 0.0
    stopped: dict[int, str] = field(default_factory=dict)    # candidate -> why its preview stopped it
    unet_rows_saved_preview: int = 0           # rows the stopped lanes would have run to the end


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sample(unet, scheduler, control: AttentionControl, candidates: list[CandidatePlan], text: TextTable,
           rules: SharingRules, steps: int, latent_shape: tuple[int, int, int], preview_step: int = 0,
           on_preview: Callable[[torch.Tensor, torch.Tensor, list[int]], dict[int, str]] | None = None
           ) -> SampleResult:
    """Run ``steps`` of ``scheduler`` for every candidate's source and edited branch.

    A candidate's ``self_steps``/``cross_steps`` count UNet evaluations (``scheduler.timesteps``),
    which are the steps for one-evaluation samplers such as Euler ancestral.

    With ``preview_step`` > 0, after that many evaluations ``on_preview(x0 of the source rows, x0 of
    the edited rows, live candidates)`` sees the scheduler's prediction of the final latents and
    returns the candidates to stop (-> reason): their rows, and source rows left with no live
    candidate, leave the lanes. Everything before the preview is computed exactly as without it.
    """
    device, dtype = unet.device, unet.dtype
    n = len(candidates)
    source_ids: dict[tuple, int] = {}
    source_of = [source_ids.setdefault((c.source_text, c.seed, c.cfg_scale), len(source_ids)) for c in candidates]
    n_src = len(source_ids)
    source_key = list(source_ids)                      # source row -> (text, seed, cfg)
    row_seed = [k[1] for k in source_key] + [c.seed for c in candidates]
    row_cfg = [k[2] for k in source_key] + [c.cfg_scale for c in candidates]
    row_text = [k[0] for k in source_key] + [c.edited_text for c in candidates]
    rows = n_src + n

    generators = [torch.Generator("cpu").manual_seed(s) for s in row_seed]
    scheduler.set_timesteps(steps, device=device)
    latents = randn_tensor((rows, *latent_shape), generator=generators, device=device, dtype=torch.float32)
    latents = latents * scheduler.init_noise_sigma
    alive = [True] * rows
    failures: dict[int, str] = {}
    calls = unet_rows = rows_saved_preview = 0
    stopped: dict[int, str] = {}
    unet_seconds = 0.0
    groups: dict[tuple, int] = {}
    step_args = step_kwargs(scheduler, generators)

    evaluations = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps):
        lanes, lane_of, groups, edited_lane = _lanes(candidates, source_of, alive, n_src, i)
        if not lanes:
            break
        plan = _plan(candidates, lanes, lane_of, source_of, n_src, i, text, rules, device)

        lane_index = torch.tensor(lanes, device=device)
        x = latents.index_select(0, lane_index)
        x = scheduler.scale_model_input(torch.cat([x, x]), t).to(dtype)
        nl = len(lanes)
        context = text.embeddings[torch.tensor([0] * nl + [row_text[r] for r in lanes], device=device)]
        _sync(device)
        t0 = time.perf_counter()
        control.plan = plan
        try:
            eps = unet(x, t, encoder_hidden_states=context).sample.float()
        finally:
            control.plan = None
        _sync(device)
        unet_seconds += time.perf_counter() - t0
        calls += 1
        unet_rows += 2 * nl

        uncond, cond = eps.chunk(2)
        scale = torch.tensor([row_cfg[r] for r in lanes], device=device).view(-1, 1, 1, 1)
        guided = uncond + scale * (cond - uncond)
        # Every live row takes its lane's prediction; edited rows their group's.
        row_lane = torch.zeros(rows, dtype=torch.long)
        live = torch.zeros(rows, dtype=torch.bool)
        for r in range(n_src):
            if alive[r]:
                row_lane[r], live[r] = lane_of[r], True
        for c, j in edited_lane.items():
            row_lane[n_src + c], live[n_src + c] = j, True
        live_d = live.to(device)
        eps_rows = torch.where(live_d.view(-1, 1, 1, 1), guided[row_lane.to(device)], torch.zeros_like(latents))
        out = scheduler.step(eps_rows, t, latents, **step_args)
        latents = out.prev_sample.float()
        if i + 1 == preview_step:
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:
                raise ValueError(f"{type(scheduler).__name__} does not predict x0 (pred_original_sample): "
                                 "render.preview needs a scheduler that does, e.g. EulerAncestralDiscreteScheduler")
            live_candidates = [c for c in range(n) if alive[n_src + c]]
            stop = on_preview(x0[:n_src].float(), x0[n_src:].float(), live_candidates) if live_candidates else {}
            before = len(_lanes(candidates, source_of, alive, n_src, i + 1)[0])
            for c, reason in stop.items():
                alive[n_src + c] = False
                stopped[c] = reason
            for r in range(n_src):   # a source row with no live candidate has nothing left to share
                alive[r] = alive[r] and any(alive[n_src + c] for c in range(n) if source_of[c] == r)
            after = len(_lanes(candidates, source_of, alive, n_src, i + 1)[0])
            rows_saved_preview = 2 * (before - after) * (evaluations - i - 1)

        finite = torch.isfinite(latents).flatten(1).all(dim=1).cpu()
        for r in range(rows):
            if alive[r] and not finite[r]:
                _fail(r, i, n_src, source_of, alive, failures)
        dead = torch.tensor([not a for a in alive], device=device)
        if dead.any():
            latents = torch.where(dead.view(-1, 1, 1, 1), torch.zeros_like(latents), latents)

    # Candidates in one group at the last step have the same final edited row: decode it once.
    last = len(scheduler.timesteps)
    twins = [groups.get((source_of[c], cand.edited_text, cand.alignment,
                         min(cand.self_steps, last), min(cand.cross_steps, last)), c)
             if alive[n_src + c] else c for c, cand in enumerate(candidates)]
    return SampleResult(latents[:n_src], latents[n_src:], source_of, twins, failures, calls, unet_rows, unet_seconds,
                        stopped, rows_saved_preview)


def _lanes(candidates: list[CandidatePlan], source_of: list[int], alive: list[bool], n_src: int, step: int):
    """Lanes of evaluation ``step``: live source rows, then one representative edited row per group
    of live edited rows that are still identical. (lanes, lane of a row, groups, edited candidate -> lane)."""
    lanes = [r for r in range(n_src) if alive[r]]
    lane_of = {r: j for j, r in enumerate(lanes)}
    groups: dict[tuple, int] = {}
    edited_lane = {}
    for c, cand in enumerate(candidates):
        if not alive[n_src + c]:
            continue
        key = (source_of[c], cand.edited_text, cand.alignment,
               min(cand.self_steps, step + 1), min(cand.cross_steps, step + 1))
        if key not in groups:
            groups[key] = c
            lanes.append(n_src + c)
            lane_of[n_src + c] = len(lanes) - 1
        edited_lane[c] = lane_of[n_src + groups[key]]
    return lanes, lane_of, groups, edited_lane


def _fail(row: int, step: int, n_src: int, source_of: list[int], alive: list[bool], failures: dict[int, str]) -> None:
    alive[row] = False
    if row < n_src:
        for c, s in enumerate(source_of):
            if s == row and alive[n_src + c]:
                alive[n_src + c] = False
                failures[c] = f"non-finite latents in the source branch at step {step}"
    else:
        failures[row - n_src] = f"non-finite latents in the edited branch at step {step}"


def _plan(candidates, lanes, lane_of, source_of, n_src, step, text: TextTable, rules: SharingRules,
          device) -> AttentionPlan:
    """Which UNet rows borrow which source rows' maps at this step (rows: [uncond lanes; cond lanes])."""
    nl = len(lanes)
    self_source = list(range(2 * nl))
    any_self = False
    cross_rows, cross_source, cross_align = [], [], []
    for j in range(nl):
        r = lanes[j]
        if r < n_src:
            continue
        cand = candidates[r - n_src]
        s = lane_of[source_of[r - n_src]]
        if step < cand.self_steps:
            any_self = True
            self_source[nl + j] = nl + s
            if rules.uncond_shares:
                self_source[j] = s
        if step < cand.cross_steps:
            cross_rows.append(nl + j)
            cross_source.append(nl + s)
            cross_align.append(cand.alignment)
    plan = AttentionPlan(self_max_tokens=rules.self_max_tokens)
    if any_self:
        plan.self_source = torch.tensor(self_source, device=device)
    if cross_rows:
        if text.value_maps is None or min(cross_align) < 0:
            raise ValueError("cross-attention sharing needs an alignment for every candidate")
        a = torch.tensor(cross_align, device=device)
        plan.cross_rows = torch.tensor(cross_rows, device=device)
        plan.cross_source = torch.tensor(cross_source, device=device)
        plan.cross_value_map = text.value_maps[a]
        plan.cross_own_scale = text.own_scales[a]
    return plan

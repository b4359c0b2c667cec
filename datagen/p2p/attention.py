"""Attention sharing as diffusers attention processors: the fast path of Prompt-to-Prompt.

Two designs, both valid; editsynth supports both and measures which makes better pairs:
- ``self`` (InstructPix2Pix's generator): for the first fraction p of the steps, every edited
  row uses its source row's self-attention maps, in both halves of classifier-free guidance.
- ``cross`` (the Prompt-to-Prompt paper, Hertz et al., ICLR 2023): the edited caption's cross-attention maps come from
  the source caption's through a word alignment (swap or refine, alignment.py), optionally
  re-weighted, for the first fraction p of the steps; self-attention maps are shared for a
  proportional shorter fraction, only in the conditional half and only at low resolution.
- ``none``: no sharing (two independent generations from the same noise).

No attention map is materialised here. Replacing a row's self-attention map is fused
attention with the source row's queries and keys and the row's own values:
``softmax(Q_src K_src^T) V_tgt``. The cross-attention edits are linear in the map's columns,
so they move onto the values (77 tokens, cheap):

    (P_src @ M + P_tgt * (1 - a)) * e @ V  =  sdpa(Q_src, K_src, M diag(e) V) + sdpa(Q_tgt, K_tgt, diag((1 - a) e) V)

with M, a the alignment's mapper and alphas and e the re-weighting. The slow reference that
materialises every map lives in reference.py; tests hold the two together numerically.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# P2P replaces self-attention maps only where there are at most 16x16 query tokens
# (prompt-to-prompt's ``replace_self_attention``); the InstructPix2Pix code replaces them all.
P2P_SELF_MAX_TOKENS = 16 * 16


def shared_steps(fraction: float, steps: int) -> int:
    """How many leading steps share attention: step i does iff ``fraction > i / (steps - 1)``.

    The test of InstructPix2Pix's ``sample_euler_ancestral(prompt2prompt_threshold=p)``.
    """
    return sum(1 for i in range(steps) if fraction > i / max(steps - 1, 1))


def attention_steps(mode: str, p: float, steps: int, self_replace_fraction: float,
                    cross_replace_fraction: float) -> tuple[int, int]:
    """(self_steps, cross_steps): the leading steps whose self/cross maps come from the source.

    In ``cross`` mode a candidate's p is the cross-replace fraction and the self-replace
    fraction keeps the configured ratio (the paper's pair 0.8/0.4 is p = 0.8).
    """
    if mode == "self":
        return shared_steps(p, steps), 0
    if mode == "cross":
        ratio = self_replace_fraction / cross_replace_fraction
        return shared_steps(p * ratio, steps), shared_steps(p, steps)
    if mode == "none":
        return 0, 0
    raise ValueError(f"unknown attention mode {mode!r}; choose self, cross or none")


@dataclass
class AttentionPlan:
    """What one UNet call shares, per row of its batch (set by the sampler before the call)."""

    self_source: torch.Tensor | None = None       # (B,) row whose self-attn Q, K each row uses
    self_max_tokens: int | None = None            # share self maps only up to this many queries
    cross_rows: torch.Tensor | None = None        # (r,) rows whose cross maps come from a source
    cross_source: torch.Tensor | None = None      # (r,) their source rows
    cross_value_map: torch.Tensor | None = None   # (r, S, S): mapper * reweight, [source token, target token]
    cross_own_scale: torch.Tensor | None = None   # (r, S): (1 - alphas) * reweight


class AttentionControl:
    """Shared by every processor of a UNet: the plan of the current call (None = plain attention)."""

    def __init__(self) -> None:
        self.plan: AttentionPlan | None = None


# --- the parts of diffusers' AttnProcessor2_0 around the attention itself ---------------
def project(attn, hidden_states, encoder_hidden_states, temb):
    """Normalise and project to per-head q, k, v (B, heads, tokens, head_dim); also what ``finish`` needs."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = hidden_states.shape
    if hidden_states.ndim == 4:
        b, c, h, w = shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    b = query.shape[0]
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (x.view(b, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value, (residual, shape)


def finish(attn, out, saved, dtype):
    """Heads back to (B, tokens, C), output projection, residual: the tail of AttnProcessor2_0."""
    residual, shape = saved
    b = out.shape[0]
    out = out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[3]).to(dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if len(shape) == 4:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _mask(attn, attention_mask, tokens, batch):
    if attention_mask is None:
        return None
    mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
    return mask.view(batch, attn.heads, -1, mask.shape[-1])


class SharedAttnProcessor:
    """The fast processor: fused attention everywhere, sharing per the control's current plan."""

    def __init__(self, control: AttentionControl):
        self.control = control

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        is_self = encoder_hidden_states is None
        q, k, v, saved = project(attn, hidden_states, encoder_hidden_states, temb)
        mask = _mask(attn, attention_mask, k.shape[2], q.shape[0])
        plan = self.control.plan
        if plan is not None and is_self and plan.self_source is not None and (
                plan.self_max_tokens is None or q.shape[2] <= plan.self_max_tokens):
            q = q.index_select(0, plan.self_source)
            k = k.index_select(0, plan.self_source)
            mask = None if mask is None else mask.index_select(0, plan.self_source)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
        elif plan is not None and not is_self and plan.cross_rows is not None:
            out = self._cross(attn, q, k, v, mask, plan)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
        return finish(attn, out, saved, q.dtype)

    @staticmethod
    def _cross(attn, q, k, v, mask, plan: AttentionPlan):
        rows, src = plan.cross_rows, plan.cross_source
        # The rows' own maps, on values scaled by (1 - alphas) * reweight (0 where the source's map replaces them).
        own = v.clone()
        own[rows] = v[rows] * plan.cross_own_scale.to(v.dtype)[:, None, :, None]
        out = F.scaled_dot_product_attention(q, k, own, attn_mask=mask, scale=attn.scale)
        # The source rows' maps on the target's values mapped to source tokens: (M diag(e)) V.
        mapped = torch.einsum("rst,rhtd->rhsd", plan.cross_value_map.to(v.dtype), v[rows])
        borrowed = F.scaled_dot_product_attention(q[src], k[src], mapped, scale=attn.scale,
                                                  attn_mask=None if mask is None else mask[src])
        return out.index_add(0, rows, borrowed)


def install(unet, processor_class=SharedAttnProcessor) -> AttentionControl:
    """Put one ``processor_class(control)`` on every attention layer of ``unet``; return the control."""
    control = AttentionControl()
    unet.set_attn_processor(processor_class(control))
    return control

"""Which triples Stage 2 must not render: captions the text encoder cannot tell apart.

The text encoder sees each caption cut to its window (77 tokens for Stable Diffusion). Two
captions that tokenize alike there condition both branches identically, so Prompt-to-Prompt
renders the same image twice and the candidate would look like a perfect "keep everything"
pair; a long caption whose only change lies past the window is the quiet case. Such a triple
is not rendered: its candidates fail with the reason, counted in the shard stats.
"""
from __future__ import annotations

REASONS = ("empty_caption", "identical_captions", "difference_past_window")


def why_not_render(tokenizer, input_caption: str, output_caption: str) -> str:
    """One of REASONS when the two captions reach the text encoder alike, else ""."""
    if not input_caption.strip() or not output_caption.strip():
        return "empty_caption"
    window = tokenizer.model_max_length
    seen = [tokenizer(c, truncation=True, max_length=window).input_ids for c in (input_caption, output_caption)]
    if seen[0] != seen[1]:
        return ""
    full = [tokenizer(c, truncation=False).input_ids for c in (input_caption, output_caption)]
    return "difference_past_window" if full[0] != full[1] else "identical_captions"

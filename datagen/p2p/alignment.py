"""Word alignment between two CLIP tokenizations, for Prompt-to-Prompt cross-attention control.

Pure functions of token strings. A CLIP BPE token that ends a word carries the suffix
``</w>``, so words are recovered from the tokens themselves: "hexagon" -> ``hex`` ``agon</w>``
is one word of two tokens, and punctuation is a word of its own (``,</w>``).

The words of the two captions are aligned (longest matching blocks, difflib). Then:
- **swap** (P2P ``AttentionReplace``): every changed word is replaced by exactly one word, so
  the captions align word for word; a swapped word's map is the source word's map, spread
  evenly over the target word's tokens when their token counts differ (P2P's
  ``get_replacement_mapper``).
- **refine** (P2P ``AttentionRefine``): words were inserted or removed; target tokens of
  unchanged words take their source token's map, the others keep their own map.

The result is expressed once, for both kinds, as a linear map over token columns:

    new_map = source_map @ mapper + target_map * (1 - alphas)

(with ``mapper`` a 0/1 gather matrix for refine, ``index`` its gather form), optionally
re-weighted per target token. Padding after the end token is aligned relative to the end
token, so both captions' padding columns correspond.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

WORD_END = "</w>"


@dataclass(frozen=True)
class TokenAlignment:
    """How the edited caption's cross-attention columns come from the source caption's.

    All tensors have one entry per token position of the text encoder's window (``length``).
    """

    kind: str                 # "swap" | "refine"
    mapper: torch.Tensor      # (length, length) float: [source token, target token] weight
    index: torch.Tensor       # (length,) long: the source token of each target token (refine's gather form)
    alphas: torch.Tensor      # (length,) float: 1 = the target token takes the source's map, 0 = keeps its own
    changed: torch.Tensor     # (length,) bool: target tokens of words that differ from the source

    def reweight(self, scale: float) -> torch.Tensor:
        """(length,) per-target-token factor: ``scale`` on the changed words, 1 elsewhere (P2P re-weighting)."""
        return torch.where(self.changed, torch.tensor(float(scale)), torch.tensor(1.0))


def split_words(tokens: list[str]) -> list[list[int]]:
    """Token positions grouped into words: a word ends at a token with ``</w>`` or a special token.

    Special tokens (``<|startoftext|>``, ``<|endoftext|>``) are words of their own. A tokenizer
    without word-end markers gives one word per token.
    """
    words: list[list[int]] = []
    current: list[int] = []
    for i, tok in enumerate(tokens):
        special = tok.startswith("<|") and tok.endswith("|>")
        if special:
            if current:
                words.append(current)
                current = []
            words.append([i])
            continue
        current.append(i)
        if tok.endswith(WORD_END):
            words.append(current)
            current = []
    if current:
        words.append(current)
    if not any(t.endswith(WORD_END) for t in tokens):  # not a CLIP BPE: one token, one word
        return [[i] for i in range(len(tokens))]
    return words


def _word_text(tokens: list[str], positions: list[int]) -> str:
    return "".join(tokens[i] for i in positions)


def align_tokens(source: list[str], target: list[str], length: int) -> TokenAlignment:
    """Align two token sequences (each with its start and end token, no padding) in a window of ``length``."""
    if len(source) > length or len(target) > length:
        raise ValueError(f"token sequences ({len(source)}, {len(target)}) longer than the window {length}; "
                         "truncate first")
    src_words, tgt_words = split_words(source), split_words(target)
    src_text = [_word_text(source, w) for w in src_words]
    tgt_text = [_word_text(target, w) for w in tgt_words]
    ops = difflib.SequenceMatcher(a=src_text, b=tgt_text, autojunk=False).get_opcodes()
    swap = all(tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1) for tag, i1, i2, j1, j2 in ops)

    mapper = torch.zeros(length, length)
    alphas = torch.zeros(length)
    changed = torch.zeros(length, dtype=torch.bool)
    index = torch.arange(length)

    def link(s: int, t: int, weight: float = 1.0) -> None:
        mapper[s, t] = weight
        alphas[t] = 1.0
        index[t] = s

    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            for sw, tw in zip(src_words[i1:i2], tgt_words[j1:j2]):
                for s, t in zip(sw, tw):  # same text -> same tokens
                    link(s, t)
        elif tag == "replace" and swap:
            for sw, tw in zip(src_words[i1:i2], tgt_words[j1:j2]):
                if len(sw) == len(tw):
                    for s, t in zip(sw, tw):
                        link(s, t)
                else:  # spread the source word's attention evenly over the target word's tokens
                    for t in tw:
                        for s in sw:
                            mapper[s, t] = 1.0 / len(tw)
                        alphas[t] = 1.0
                        index[t] = sw[0]
                changed[tw] = True
        else:  # inserted, or replaced by a different number of words: the target keeps its own map
            for tw in tgt_words[j1:j2]:
                changed[tw] = True

    # Padding: the k-th column after the target's end token follows the source's k-th.
    for t in range(len(target), length):
        s = len(source) + (t - len(target))
        if s < length:
            link(s, t)
    return TokenAlignment("swap" if swap else "refine", mapper, index, alphas, changed)


def caption_tokens(tokenizer, caption: str) -> tuple[list[str], bool]:
    """The caption's tokens in the text encoder's window (start/end included) and whether it was truncated."""
    window = tokenizer.model_max_length
    full = tokenizer(caption, truncation=False).input_ids
    ids = tokenizer(caption, truncation=True, max_length=window).input_ids
    return tokenizer.convert_ids_to_tokens(ids), len(full) > window


def align_captions(tokenizer, source: str, target: str) -> TokenAlignment:
    """Align two captions as the text encoder sees them (truncated to its window)."""
    src, _ = caption_tokens(tokenizer, source)
    tgt, _ = caption_tokens(tokenizer, target)
    return align_tokens(src, tgt, tokenizer.model_max_length)

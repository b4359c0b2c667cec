"""The rejections of InstructPix2Pix's triple generator, each counted by reason.

- a reply that does not split into exactly two parts (the backends report ``malformed_reply``,
  or ``model_refused`` for a refusal: replies.py);
- an empty instruction or output caption;
- an output caption equal to the input after strip of " .!?" and lower-case;
- a duplicate source caption (first occurrence in source order wins, so the choice is the
  same whichever shard or machine sees it);
- captions and instructions outside the configured length limits;
- texts the optional moderation endpoint flags.
"""
from __future__ import annotations

import asyncio
import hashlib
from typing import Iterable, Sequence

import numpy as np

from datagen.config import OpenAIBackendConfig, ValidationConfig

from .openai_client import BackendError, CallCounters, RequestRejected, api_key, call_with_retries, make_client

# Every reason a source caption can yield no triple.
REASONS = (
    "duplicate_caption", "caption_too_short", "caption_too_long",         # the source caption
    "request_rejected", "model_refused", "malformed_reply", "not_shapes_caption",  # the backend
    "empty_instruction", "empty_output", "output_equals_input",             # the reply
    "instruction_too_short", "instruction_too_long",
    "output_too_short", "output_too_long", "moderation_flagged",
)


def normalize(text: str) -> str:
    """The comparison key of a caption: the original's strip(" .!?").lower(), spaces collapsed."""
    return " ".join(text.strip().strip(" .!?").lower().split())


def duplicate_flags(slices: Iterable[Sequence[str]]) -> np.ndarray:
    """``flags[i]`` is True when caption ``i`` (of the slices, in order) equals (normalized) an
    earlier one. Holds 8 bytes per caption (a 64-bit hash of its key), never the texts, so a source
    of millions of captions is checked in one streaming pass."""
    keys = np.fromiter((int.from_bytes(hashlib.blake2b(normalize(c).encode(), digest_size=8).digest(), "little")
                        for captions in slices for c in captions), dtype=np.uint64)
    flags = np.ones(len(keys), dtype=bool)
    flags[np.unique(keys, return_index=True)[1]] = False   # the first occurrence of each key is no duplicate
    return flags


class Validator:
    def __init__(self, cfg: ValidationConfig):
        self.cfg = cfg

    def _length(self, text: str, what: str, lo: int, hi: int) -> str:
        n = len(text.strip())
        if n < lo:
            return f"{what}_too_short"
        if n > hi:
            return f"{what}_too_long"
        return ""

    def check_caption(self, caption: str) -> str:
        """Why a source caption is not worth a request ("" when it is)."""
        return self._length(caption, "caption", self.cfg.min_caption_chars, self.cfg.max_caption_chars)

    def check_reply(self, input_caption: str, instruction: str, output_caption: str) -> str:
        """Why a (caption, instruction, output) draft is rejected ("" when it is kept)."""
        if not instruction.strip():
            return "empty_instruction"
        if not output_caption.strip():
            return "empty_output"
        if normalize(output_caption) == normalize(input_caption):
            return "output_equals_input"
        return (self._length(instruction, "instruction", self.cfg.min_instruction_chars, self.cfg.max_instruction_chars)
                or self._length(output_caption, "output", self.cfg.min_caption_chars, self.cfg.max_caption_chars))


class Moderator:
    """The moderation endpoint of the same OpenAI-compatible server: one flag per text group."""

    BATCH = 32  # groups per request

    def __init__(self, cfg: OpenAIBackendConfig):
        api_key(cfg)
        self.cfg = cfg
        self.counters = CallCounters()

    def flagged(self, groups: list[tuple[str, ...]]) -> list[bool]:
        """True for a group (input, instruction, output) when any of its texts is flagged."""
        if not groups:
            return []
        return asyncio.run(self._flag_all(groups))

    async def _flag_all(self, groups: list[tuple[str, ...]]) -> list[bool]:
        client = make_client(self.cfg)
        semaphore = asyncio.Semaphore(self.cfg.concurrency)
        try:
            batches = [groups[i:i + self.BATCH] for i in range(0, len(groups), self.BATCH)]
            results = await asyncio.gather(*(self._flag_batch(client, semaphore, b) for b in batches))
        finally:
            await client.close()
        return [flag for batch in results for flag in batch]

    async def _flag_batch(self, client, semaphore, groups: list[tuple[str, ...]]) -> list[bool]:
        texts = [t for g in groups for t in g]
        async with semaphore:
            try:
                resp = await call_with_retries(
                    lambda: client.moderations.create(input=texts, model=self.cfg.moderation_model),
                    self.cfg, self.counters, what="moderation request")
            except RequestRejected as e:  # unlike a generation request, no caption is to blame
                raise BackendError(str(e)) from None
        if len(resp.results) != len(texts):
            raise ValueError(f"moderation endpoint returned {len(resp.results)} results for {len(texts)} inputs")
        flags, i = [], 0
        for g in groups:
            flags.append(any(r.flagged for r in resp.results[i:i + len(g)]))
            i += len(g)
        return flags

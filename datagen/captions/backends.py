"""What a Stage 1 backend is (captions in, drafts out) and the factory that builds one by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from datagen.config import CaptionsConfig
from datagen.records import SourceCaption

from .openai_client import CallCounters


@dataclass
class Draft:
    """A backend's proposal for one source caption, before validation.

    ``rejection`` is set when the backend already knows the caption yields nothing
    (malformed reply, request refused, not a shapes-world caption).
    """

    source: SourceCaption
    input_caption: str = ""
    instruction: str = ""
    output_caption: str = ""
    edit_kind: str = ""
    rejection: str = ""


class Backend(Protocol):
    name: str            # provenance: Triple.backend
    model: str           # provenance: Triple.model
    prompt_version: str  # provenance: Triple.prompt_version
    counters: CallCounters

    def draft(self, sources: list[SourceCaption]) -> list[Draft]:
        """One draft per source caption, in order."""
        ...


def make_backend(cfg: CaptionsConfig, run_seed: int) -> Backend:
    if cfg.backend == "grammar":
        from .grammar_backend import GrammarBackend

        return GrammarBackend(run_seed)
    if cfg.backend == "openai":
        from .openai_backend import OpenAIBackend
        from .prompts import load_seed_triples

        return OpenAIBackend(cfg.openai, load_seed_triples(cfg.seed_triples or None), run_seed)
    raise ValueError(f"unknown captions backend {cfg.backend!r}")

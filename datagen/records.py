"""The data contracts between stages: the one place a field name is defined.

Data flows one way: Triple (Stage 1) -> Candidate (Stage 2) -> Scores (Stage 3) -> exported
pairs. Every record has a stable id derived from its inputs and the run seed, so any record
can be regenerated exactly. Ids contain no dots (a webdataset key rule).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar


def stable_id(*parts: Any, length: int = 16) -> str:
    """A short hex id that depends only on ``parts`` (no dots, safe as a webdataset key)."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def candidate_id(triple_id: str, index: int) -> str:
    return f"{triple_id}_{index:04d}"


def seed_from(*parts: Any) -> int:
    """A 63-bit integer seed derived from ``parts``: the key of every random draw we make."""
    return int(stable_id(*parts, length=16), 16) & ((1 << 63) - 1)


class Record:
    """Mixin: plain-dict round trip for parquet/json rows."""

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class SourceCaption(Record):
    """A caption that Stage 1 turns into a triple."""

    source_id: str
    caption: str


@dataclass
class Triple(Record):
    """Stage 1 output: what to draw before, what to say, what to draw after."""

    triple_id: str
    input_caption: str
    instruction: str
    output_caption: str
    source_id: str = ""
    edit_kind: str = ""          # recolour, reshape, ... when the backend knows it, else ""
    backend: str = ""            # grammar | openai
    model: str = ""              # LLM name, or the grammar version
    prompt_version: str = ""


@dataclass
class CandidateSpec(Record):
    """The render settings of one candidate, drawn from (run seed, triple id, index)."""

    candidate_id: str
    triple_id: str
    index: int
    seed: int
    p: float                     # fraction of steps that share attention
    cfg_scale: float
    mode: str                    # self | cross | none


@dataclass
class Candidate(Record):
    """Stage 2 output: one rendered (before, after) pair and how it was made.

    Images travel beside the row (webdataset tar of the shard); the row carries their
    format. ``status`` is "ok" or "failed" with ``failure_reason``.
    """

    candidate_id: str
    triple_id: str
    index: int
    seed: int
    p: float
    cfg_scale: float
    mode: str
    steps: int
    model_id: str
    input_caption: str
    instruction: str
    output_caption: str
    edit_kind: str = ""
    status: str = "ok"           # ok | failed | stopped (its preview predicted failure: render.preview)
    failure_reason: str = ""
    image_format: str = "png"
    # The four CLIP metrics of its preview (x0 prediction part-way, render.preview); None: no preview.
    preview_sim_0: float | None = None
    preview_sim_1: float | None = None
    preview_sim_image: float | None = None
    preview_sim_direction: float | None = None

    IMAGE_KEYS: ClassVar[tuple[str, str]] = ("input", "edited")


@dataclass
class Scores(Record):
    """Stage 3 output: the four CLIP metrics of one candidate (the InstructPix2Pix filter's)."""

    candidate_id: str
    triple_id: str
    sim_0: float                 # cos(img_in, txt_in)
    sim_1: float                 # cos(img_out, txt_out)
    sim_image: float             # cos(img_in, img_out)
    sim_direction: float         # cos(img_out - img_in, txt_out - txt_in)
    status: str = "ok"
    failure_reason: str = ""


@dataclass
class ScoredCandidate(Record):
    """Stage 3 row: one candidate's Scores joined with its ids, captions and render settings.

    Stored for EVERY candidate (filter shards), so selection can be redone and audited
    without a GPU; ``images_kept`` says whether its images passed the looser keep bound and
    were copied beside the row.
    """

    candidate_id: str
    triple_id: str
    index: int
    seed: int
    p: float
    cfg_scale: float
    mode: str
    steps: int
    model_id: str
    input_caption: str
    instruction: str
    output_caption: str
    edit_kind: str
    image_format: str
    sim_0: float
    sim_1: float
    sim_image: float
    sim_direction: float
    status: str = "ok"           # ok | failed
    failure_reason: str = ""     # "<reason>: <detail>"; reason is what stats count
    images_kept: bool = False


@dataclass
class ShardStats(Record):
    """Written LAST for a shard: its presence marks the shard done (img2dataset discipline)."""

    stage: str
    shard: int
    count_in: int = 0
    count_out: int = 0
    seconds: float = 0.0
    rejections: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

"""Caption sources of Stage 1: the shipped set, a txt/jsonl/parquet file, a HF dataset, shapes scenes.

A source is a list addressed by index: caption ``i`` always gets the same ``source_id``, so a
shard (a range of indices) names the same captions on every run and every machine.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

from datagen.config import CaptionSourceConfig, ConfigError
from datagen.hf_datasets import DatasetOpenError, open_hf_split
from datagen.records import SourceCaption, seed_from, stable_id

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
SHIPPED_CAPTIONS = DATA_DIR / "captions.txt"


def source_id(index: int, caption: str) -> str:
    """Depends on the position and the text, so an edited source file cannot reuse old ids."""
    return stable_id("source", index, caption)


def clean_caption(value) -> str:
    """One line of text: a newline would break the completion format ``input\\n##\\n``."""
    if value is None:
        return ""
    return " ".join(str(value).split())


class CaptionSource:
    """The captions of a run, loaded once; ``size()`` is None for the unbounded shapes source."""

    def __init__(self, cfg: CaptionSourceConfig, run_seed: int):
        self.cfg = cfg
        self.run_seed = run_seed
        self._captions: list[str] | None = None
        self._shapes_cache: list[str] = []

    # --- public -------------------------------------------------------------------------
    def size(self) -> int | None:
        if self.cfg.kind == "shapes":
            return self.cfg.limit
        return len(self._finite())

    def captions(self, start: int, stop: int) -> list[str]:
        """The caption texts of indices ``[start, stop)``."""
        if self.cfg.kind == "shapes":
            self._extend_shapes(stop)
            return self._shapes_cache[start:stop]
        return self._finite()[start:stop]

    def get(self, start: int, stop: int) -> list[SourceCaption]:
        return [SourceCaption(source_id(i, c), c) for i, c in zip(range(start, stop), self.captions(start, stop))]

    def describe(self) -> str:
        return {"shipped": f"shipped captions ({SHIPPED_CAPTIONS.name})", "shapes": "shapes-world scenes"}.get(
            self.cfg.kind, f"{self.cfg.kind} {self.cfg.path}")

    # --- loading ------------------------------------------------------------------------
    def _finite(self) -> list[str]:
        if self._captions is None:
            loaded = _LOADERS[self.cfg.kind](self.cfg)
            self._captions = [clean_caption(c) for c in loaded[: self.cfg.limit]]
            log.info("caption source: %d caption(s) from %s", len(self._captions), self.describe())
        return self._captions

    def _extend_shapes(self, stop: int) -> None:
        from datagen.shapes import grammar, world

        for i in range(len(self._shapes_cache), stop):
            rng = random.Random(seed_from(self.run_seed, "shapes-source", i))
            scene = world.sample_scene(rng, self.cfg.min_objects, self.cfg.max_objects)
            self._shapes_cache.append(grammar.caption(scene))


def _load_shipped(cfg: CaptionSourceConfig) -> list[str]:
    lines = SHIPPED_CAPTIONS.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def _load_file(cfg: CaptionSourceConfig) -> list[str]:
    path = Path(cfg.path)
    if not path.is_file():
        raise ConfigError(f"captions.source.path: file not found: {path}")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix == ".jsonl":
        return _load_jsonl(path, cfg.column)
    if suffix == ".parquet":
        return _load_parquet(path, cfg.column)
    raise ConfigError(f"captions.source.path: {path}: unsupported file type {suffix!r} (use .txt, .jsonl or .parquet)")


def _load_jsonl(path: Path, column: str) -> list[str]:
    captions = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"captions.source.path: {path} line {n}: not valid JSON ({e})") from None
            if not isinstance(row, dict) or column not in row:
                keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise ConfigError(f"captions.source.column: {column!r} missing in {path} line {n} (has: {keys})")
            captions.append(row[column])
    return captions


def _load_parquet(path: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    if column not in names:
        raise ConfigError(f"captions.source.column: {column!r} not in {path} (columns: {', '.join(names)})")
    return pq.read_table(path, columns=[column]).column(column).to_pylist()


def _load_hf(cfg: CaptionSourceConfig) -> list[str]:
    """A dataset directory saved with ``save_to_disk``, or anything ``load_dataset`` accepts."""
    try:
        ds = open_hf_split(cfg.path, cfg.split)
    except DatasetOpenError as e:
        raise ConfigError(f"captions.source.{e.about}: {e}") from None
    if cfg.column not in ds.column_names:
        raise ConfigError(f"captions.source.column: {cfg.column!r} not in dataset {cfg.path!r} "
                          f"(columns: {', '.join(ds.column_names)})")
    if cfg.limit is not None and cfg.limit < len(ds):
        ds = ds.select(range(cfg.limit))
    return ds[cfg.column]


_LOADERS = {"shipped": _load_shipped, "file": _load_file, "hf": _load_hf}

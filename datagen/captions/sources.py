"""Caption sources of Stage 1: the shipped set, a txt/jsonl/parquet file, a HF dataset, shapes scenes.

A source is a list addressed by index: caption ``i`` always gets the same ``source_id``, so a
shard (a range of indices) names the same captions on every run and every machine.
"""
from __future__ import annotations

import json
import logging
import random
from array import array
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
    """The captions of a run, read a slice at a time: a source of millions of rows is never held
    whole (a text file is indexed by line offsets, parquet read by row group, a Hugging Face dataset
    memory-mapped). ``size()`` is None for the unbounded shapes source."""

    def __init__(self, cfg: CaptionSourceConfig, run_seed: int):
        self.cfg = cfg
        self.run_seed = run_seed
        self._reader = None
        self._shapes_cache: list[str] = []

    # --- public -------------------------------------------------------------------------
    def size(self) -> int | None:
        if self.cfg.kind == "shapes":
            return self.cfg.limit
        n = len(self._finite())
        return n if self.cfg.limit is None else min(n, self.cfg.limit)

    def captions(self, start: int, stop: int) -> list[str]:
        """The caption texts of indices ``[start, stop)``."""
        if self.cfg.kind == "shapes":
            self._extend_shapes(stop)
            return self._shapes_cache[start:stop]
        stop = min(stop, self.size())
        return [clean_caption(c) for c in self._finite().read(start, stop)] if start < stop else []

    def get(self, start: int, stop: int) -> list[SourceCaption]:
        return [SourceCaption(source_id(i, c), c) for i, c in zip(range(start, stop), self.captions(start, stop))]

    def describe(self) -> str:
        return {"shipped": f"shipped captions ({SHIPPED_CAPTIONS.name})", "shapes": "shapes-world scenes"}.get(
            self.cfg.kind, f"{self.cfg.kind} {self.cfg.path}")

    # --- reading ------------------------------------------------------------------------
    def _finite(self):
        if self._reader is None:
            self._reader = _READERS[self.cfg.kind](self.cfg)
            log.info("caption source: %d caption(s) in %s", len(self._reader), self.describe())
        return self._reader

    def _extend_shapes(self, stop: int) -> None:
        from datagen.shapes import grammar, world

        for i in range(len(self._shapes_cache), stop):
            rng = random.Random(seed_from(self.run_seed, "shapes-source", i))
            scene = world.sample_scene(rng, self.cfg.min_objects, self.cfg.max_objects)
            self._shapes_cache.append(grammar.caption(scene))


class LineSource:
    """The kept lines of a text or JSON-lines file, by index: one pass records where each kept line
    starts (and checks every line, so a bad line fails before any work); a slice seeks to it."""

    def __init__(self, path: Path, keep, parse=lambda line, n: line):
        self.path, self.parse = path, parse
        self.offsets = array("q")
        with path.open("rb") as f:
            offset = 0
            for n, raw in enumerate(f, 1):
                line = raw.decode("utf-8").rstrip("\r\n")
                if keep(line):
                    parse(line, n)
                    self.offsets.append(offset)
                offset += len(raw)

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, start: int, stop: int) -> list[str]:
        out = []
        with self.path.open("rb") as f:
            for offset in self.offsets[start:stop]:
                f.seek(offset)
                out.append(self.parse(f.readline().decode("utf-8").rstrip("\r\n"), None))
        return out


class ParquetSource:
    """One column of a parquet file, read by the row groups that hold a slice."""

    def __init__(self, path: Path, column: str):
        import pyarrow.parquet as pq

        self.file, self.column = pq.ParquetFile(path), column
        names = self.file.schema_arrow.names
        if column not in names:
            raise ConfigError(f"captions.source.column: {column!r} not in {path} (columns: {', '.join(names)})")
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.starts = [sum(sizes[:g]) for g in range(len(sizes) + 1)]

    def __len__(self) -> int:
        return self.starts[-1]

    def read(self, start: int, stop: int) -> list[str]:
        groups = [g for g in range(self.file.num_row_groups) if self.starts[g] < stop and self.starts[g + 1] > start]
        values = self.file.read_row_groups(groups, columns=[self.column]).column(0).to_pylist()
        first = self.starts[groups[0]]
        return values[start - first: stop - first]


class HFSource:
    """One column of a Hugging Face dataset split (memory-mapped Arrow: a slice reads only itself)."""

    def __init__(self, cfg: CaptionSourceConfig):
        try:
            self.dataset = open_hf_split(cfg.path, cfg.split)
        except DatasetOpenError as e:
            raise ConfigError(f"captions.source.{e.about}: {e}") from None
        if cfg.column not in self.dataset.column_names:
            raise ConfigError(f"captions.source.column: {cfg.column!r} not in dataset {cfg.path!r} "
                              f"(columns: {', '.join(self.dataset.column_names)})")
        self.column = cfg.column

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, start: int, stop: int) -> list[str]:
        return self.dataset[start:stop][self.column]


def _text_lines(path: Path, skip_comments: bool = False) -> LineSource:
    return LineSource(path, keep=lambda line: bool(line.strip()) and not (skip_comments and line.startswith("#")))


def _jsonl_lines(path: Path, column: str) -> LineSource:
    def value(line: str, n: int | None) -> str:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"captions.source.path: {path} line {n}: not valid JSON ({e})") from None
        if not isinstance(row, dict) or column not in row:
            keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise ConfigError(f"captions.source.column: {column!r} missing in {path} line {n} (has: {keys})")
        return row[column]

    return LineSource(path, keep=lambda line: bool(line.strip()), parse=value)


def _read_shipped(cfg: CaptionSourceConfig) -> LineSource:
    return _text_lines(SHIPPED_CAPTIONS, skip_comments=True)


def _read_file(cfg: CaptionSourceConfig):
    path = Path(cfg.path)
    if not path.is_file():
        raise ConfigError(f"captions.source.path: file not found: {path}")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".txt":
        return _text_lines(path)
    if suffix == ".jsonl":
        return _jsonl_lines(path, cfg.column)
    if suffix == ".parquet":
        return ParquetSource(path, cfg.column)
    raise ConfigError(f"captions.source.path: {path}: unsupported file type {suffix!r} (use .txt, .jsonl or .parquet)")


_READERS = {"shipped": _read_shipped, "file": _read_file, "hf": HFSource}

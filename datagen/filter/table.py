"""The filter stage's files in a run, and how the other filter modules read them.

  filter/filter-<i>.parquet         one ScoredCandidate row per candidate of render shard i
  filter/filter-<i>.tar             images of the candidates inside the keep bound
  filter/filter-<i>.oracle.parquet  shapes-world oracle judgements (when the triples allow)
  filter/filter-<i>.stats.json      written last: the shard is done
  filter/selection.parquet          the selected pairs (ids, rank, metrics)
  filter/selection.json             the thresholds and counts that produced it
"""
from __future__ import annotations

import dataclasses
import json
import tarfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from datagen.records import ScoredCandidate
from datagen.store import RunStore

STAGE = "filter"
ORACLE_PART = "oracle.parquet"
SELECTION_FILE = "selection.parquet"
SELECTION_INFO = "selection.json"

_ARROW = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_(),
          "int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}
SCORES_SCHEMA = pa.schema([(f.name, _ARROW[f.type]) for f in dataclasses.fields(ScoredCandidate)])
ORACLE_FIELDS = ("input_ok", "output_ok", "edit_ok", "preserved", "correct", "preserved_full", "correct_full")
ORACLE_SCHEMA = pa.schema([("candidate_id", pa.string())] + [(f, pa.bool_()) for f in ORACLE_FIELDS])


class RunError(RuntimeError):
    """A run folder lacks what a command needs; the message says what and how to get it."""


def read_scores(store: RunStore, columns: list[str] | None = None, shards: list[int] | None = None) -> pd.DataFrame:
    """ScoredCandidate rows of the done filter shards (or ``shards``), with their ``shard`` number.

    ``columns`` reads only those (refilter needs ids and metrics, not captions: at the
    paper's 45M candidates that is most of the memory).
    """
    schema = SCORES_SCHEMA if columns is None else pa.schema([SCORES_SCHEMA.field(c) for c in columns])
    frames = []
    for shard in store.done_shards(STAGE) if shards is None else shards:
        path = store.shard_path(STAGE, shard, "parquet")
        table = pq.read_table(path, columns=schema.names, schema=SCORES_SCHEMA) if path.exists() else schema.empty_table()
        frames.append(table.to_pandas().assign(shard=shard))
    if not frames:
        return schema.empty_table().to_pandas().assign(shard=pd.Series(dtype="int64"))
    return pd.concat(frames, ignore_index=True)


def read_oracle(store: RunStore) -> pd.DataFrame | None:
    """Oracle judgements of all done shards (candidate_id + ORACLE_FIELDS), or None if none."""
    frames = [pq.read_table(p).to_pandas() for s in store.done_shards(STAGE)
              if (p := store.shard_path(STAGE, s, ORACLE_PART)).exists()]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def read_kept_images(store: RunStore, shard: int) -> dict[str, dict[str, bytes]]:
    """``{candidate_id: {"input.png": bytes, "edited.png": bytes}}`` of one filter shard."""
    path = store.shard_path(STAGE, shard, "tar")
    return store.read_tar(STAGE, shard) if path.exists() else {}


def read_images_for(store: RunStore, shard: int, candidate_ids: set[str]) -> dict[str, dict[str, bytes]]:
    """Like read_kept_images, but holds only the samples of ``candidate_ids`` in memory."""
    errors: list[str] = []
    return {k: s for k, s in stream_samples(store.shard_path(STAGE, shard, "tar"), errors) if k in candidate_ids}


def _truncated(path) -> bool:
    """A complete tar ends with two zero blocks; tarfile itself stops quietly when a file is cut
    at a header boundary, so their absence is how a truncated shard shows."""
    with open(path, "rb") as f:
        f.seek(max(0, Path(path).stat().st_size - 1024))
        return bool(f.read(1024).strip(b"\0"))


def stream_samples(path, errors: list[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) of a webdataset tar, read sequentially with one sample in memory.

    A tar that cannot be read (missing, garbage, truncated) ends the stream and appends the
    reason to ``errors``; the complete samples read before the damage are still yielded (the
    last sample of a truncated tar may be incomplete, so it is not).
    """
    try:
        truncated = _truncated(path)
        with tarfile.open(path, "r|*") as tar:
            key, sample = None, {}
            for member in tar:
                if not member.isfile() or "." not in member.name:
                    continue
                k, ext = member.name.split(".", 1)
                if k != key and sample:
                    yield key, sample
                    sample = {}
                key = k
                sample[ext] = tar.extractfile(member).read()
        if truncated:
            errors.append(f"{Path(path).name}: truncated (no end-of-archive marker)")
        elif sample:
            yield key, sample
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        errors.append(f"{Path(path).name}: {type(e).__name__}: {e}")


def image_pair(sample: dict[str, bytes]) -> tuple[bytes, bytes, str] | None:
    """(input bytes, edited bytes, extension) of a stored sample, None if either is missing."""
    for ext in ("png", "jpg", "jpeg", "webp"):
        if f"input.{ext}" in sample and f"edited.{ext}" in sample:
            return sample[f"input.{ext}"], sample[f"edited.{ext}"], ext
    return None


def write_selection(store: RunStore, selection: pa.Table | pd.DataFrame, info: dict[str, Any]) -> Path:
    path = store.stage_dir(STAGE) / SELECTION_FILE
    with store.atomic_path(path) as tmp:
        if isinstance(selection, pd.DataFrame):
            selection.to_parquet(tmp, index=False)
        else:
            pq.write_table(selection, tmp)
    with store.atomic_path(store.stage_dir(STAGE) / SELECTION_INFO) as tmp:
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
    return path


def read_selection(store: RunStore) -> pd.DataFrame:
    path = store.stage_dir(STAGE) / SELECTION_FILE
    if not path.exists():
        raise RunError(f"{path} not found: run the filter stage (`editsynth generate --stages filter`) "
                       f"or `editsynth refilter --run {store.root}` first")
    return pd.read_parquet(path)


def read_selection_info(store: RunStore) -> dict[str, Any]:
    path = store.stage_dir(STAGE) / SELECTION_INFO
    return json.loads(path.read_text()) if path.exists() else {}

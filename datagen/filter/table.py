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
        name = store.shard_name(STAGE, shard, "parquet")
        table = (store.read_arrow(name, columns=schema.names, schema=SCORES_SCHEMA) if store.exists(name)
                 else schema.empty_table())
        frames.append(table.to_pandas().assign(shard=shard))
    if not frames:
        return schema.empty_table().to_pandas().assign(shard=pd.Series(dtype="int64"))
    return pd.concat(frames, ignore_index=True)


def read_oracle(store: RunStore) -> pd.DataFrame | None:
    """Oracle judgements of all done shards (candidate_id + ORACLE_FIELDS), or None if none."""
    frames = [store.read_arrow(name).to_pandas() for s in store.done_shards(STAGE)
              if store.exists(name := store.shard_name(STAGE, s, ORACLE_PART))]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def read_kept_images(store: RunStore, shard: int) -> dict[str, dict[str, bytes]]:
    """``{candidate_id: {"input.png": bytes, "edited.png": bytes}}`` of one filter shard."""
    return store.read_tar(STAGE, shard) if store.exists(store.shard_name(STAGE, shard, "tar")) else {}


def read_images_for(store: RunStore, shard: int, candidate_ids: set[str]) -> dict[str, dict[str, bytes]]:
    """Like read_kept_images, but holds only the samples of ``candidate_ids`` in memory."""
    errors: list[str] = []
    return {k: s for k, s in stream_samples(store, store.shard_name(STAGE, shard, "tar"), errors)
            if k in candidate_ids}


def _truncated(store: RunStore, name: str) -> bool:
    """A complete tar ends with two zero blocks; tarfile itself stops quietly when a file is cut
    at a header boundary, so their absence is how a truncated shard shows."""
    with store.open(name) as f:
        f.seek(max(0, store.size(name) - 1024))
        return bool(f.read(1024).strip(b"\0"))


def stream_samples(store: RunStore, name: str, errors: list[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) of the webdataset tar ``name`` of ``store``, read sequentially with one
    sample in memory.

    A tar that cannot be read (missing, garbage, truncated) ends the stream and appends the
    reason to ``errors``; the complete samples read before the damage are still yielded (the
    last sample of a truncated tar may be incomplete, so it is not).
    """
    filename = name.rsplit("/", 1)[-1]
    try:
        truncated = _truncated(store, name)
        with store.open(name) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
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
            errors.append(f"{filename}: truncated (no end-of-archive marker)")
        elif sample:
            yield key, sample
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        errors.append(f"{filename}: {type(e).__name__}: {e}")


def image_pair(sample: dict[str, bytes]) -> tuple[bytes, bytes, str] | None:
    """(input bytes, edited bytes, extension) of a stored sample, None if either is missing."""
    for ext in ("png", "jpg", "jpeg", "webp"):
        if f"input.{ext}" in sample and f"edited.{ext}" in sample:
            return sample[f"input.{ext}"], sample[f"edited.{ext}"], ext
    return None


def write_selection(store: RunStore, selection: pa.Table | pd.DataFrame, info: dict[str, Any]) -> str:
    with store.writing(f"{STAGE}/{SELECTION_FILE}") as tmp:
        if isinstance(selection, pd.DataFrame):
            selection.to_parquet(tmp, index=False)
        else:
            pq.write_table(selection, tmp)
    store.write_json(f"{STAGE}/{SELECTION_INFO}", info)
    return store.url(f"{STAGE}/{SELECTION_FILE}")


def read_selection(store: RunStore) -> pd.DataFrame:
    name = f"{STAGE}/{SELECTION_FILE}"
    if not store.exists(name):
        raise RunError(f"{store.url(name)} not found: run the filter stage (`editsynth generate --stages filter`) "
                       f"or `editsynth refilter --run {store.location}` first")
    return pd.read_parquet(store.url(name), filesystem=store.filesystem)


def read_selection_info(store: RunStore) -> dict[str, Any]:
    name = f"{STAGE}/{SELECTION_INFO}"
    return json.loads(store.read_text(name)) if store.exists(name) else {}

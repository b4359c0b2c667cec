"""The run folder: shard naming, atomic writes, done markers, statistics, resume.

A run is ``<out>/<stage>/``. Shard ``i`` of a stage is a set of files named
``<stage>-<i:05d>.<part>`` written under temporary names and renamed into place, then a
``<stage>-<i:05d>.stats.json`` written LAST: its presence marks the shard done
(img2dataset's discipline). A re-run skips done shards and redoes partial ones.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .records import ShardStats


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- naming -------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def shard_path(self, stage: str, shard: int, part: str) -> Path:
        return self.stage_dir(stage) / f"{stage}-{shard:05d}.{part}"

    def stats_path(self, stage: str, shard: int) -> Path:
        return self.shard_path(stage, shard, "stats.json")

    # --- state --------------------------------------------------------------------------
    def is_done(self, stage: str, shard: int) -> bool:
        return self.stats_path(stage, shard).exists()

    def done_shards(self, stage: str) -> list[int]:
        d = self.stage_dir(stage)
        if not d.exists():
            return []
        prefix = f"{stage}-"
        return sorted(int(p.name[len(prefix):len(prefix) + 5]) for p in d.glob(f"{stage}-*.stats.json"))

    def clear_stage(self, stage: str) -> None:
        shutil.rmtree(self.stage_dir(stage), ignore_errors=True)

    # --- writing ------------------------------------------------------------------------
    @contextmanager
    def atomic_path(self, path: Path) -> Iterator[Path]:
        """Yield a temporary path beside ``path``; rename it into place only on success."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            os.replace(tmp_path, path)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()

    def write_table(self, stage: str, shard: int, rows: list[dict[str, Any]], part: str = "parquet",
                    schema: pa.Schema | None = None) -> Path:
        path = self.shard_path(stage, shard, part)
        table = pa.Table.from_pylist(rows, schema=schema) if rows or schema else pa.table({})
        with self.atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    @contextmanager
    def table_writer(self, stage: str, shard: int, schema: pa.Schema, part: str = "parquet",
                     rows_per_group: int = 8192) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
        """Write a shard's table a few rows at a time: yields ``add(rows)``. At most
        ``rows_per_group`` rows are held; the file is in place only when the block ends."""
        path = self.shard_path(stage, shard, part)
        pending: list[dict[str, Any]] = []
        with self.atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            def flush() -> None:
                writer.write_table(pa.Table.from_pylist(pending, schema=schema))
                pending.clear()

            def add(rows: list[dict[str, Any]]) -> None:
                pending.extend(rows)
                if len(pending) >= rows_per_group:
                    flush()

            yield add
            if pending:
                flush()

    @contextmanager
    def tar_writer(self, stage: str, shard: int, part: str = "tar") -> Iterator[Callable[[dict[str, bytes]], int]]:
        """Write a webdataset tar sample by sample: yields ``add(sample) -> bytes added``, where a
        sample is ``{"__key__": key, "<ext>": bytes, ...}``. The tar is in place only when the block ends."""
        path = self.shard_path(stage, shard, part)
        with self.atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
            def add(sample: dict[str, bytes]) -> int:
                key = sample["__key__"]
                if "." in key:
                    raise ValueError(f"webdataset key {key!r} contains a dot")
                size = 0
                for ext, data in sample.items():
                    if ext == "__key__":
                        continue
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    info.mtime = 0  # deterministic bytes for identical content
                    tar.addfile(info, io.BytesIO(data))
                    size += len(data)
                return size

            yield add

    def write_tar(self, stage: str, shard: int, samples: Iterable[dict[str, bytes]], part: str = "tar") -> Path:
        """A webdataset tar of ``samples``, streamed: each sample is ``{"__key__": key, "<ext>": bytes, ...}``."""
        with self.tar_writer(stage, shard, part) as add:
            for sample in samples:
                add(sample)
        return self.shard_path(stage, shard, part)

    def write_stats(self, stats: ShardStats) -> Path:
        """Mark a shard done. Call this last, after every other file of the shard is in place.
        Records where the shard ran (host, Ray node id), so a run shows how work spread."""
        for key, value in placement().items():
            stats.extra.setdefault(key, value)
        path = self.stats_path(stats.stage, stats.shard)
        with self.atomic_path(path) as tmp:
            tmp.write_text(json.dumps(stats.to_row(), indent=1, sort_keys=True))
        return path

    # --- reading ------------------------------------------------------------------------
    def read_table(self, stage: str, shard: int, part: str = "parquet") -> list[dict[str, Any]]:
        return pq.read_table(self.shard_path(stage, shard, part)).to_pylist()

    def read_stage(self, stage: str, part: str = "parquet") -> list[dict[str, Any]]:
        """All rows of the done shards of a stage, in shard order."""
        rows: list[dict[str, Any]] = []
        for shard in self.done_shards(stage):
            rows.extend(self.read_table(stage, shard, part))
        return rows

    def read_tar(self, stage: str, shard: int, part: str = "tar") -> dict[str, dict[str, bytes]]:
        """``{key: {ext: bytes}}`` of a webdataset tar shard."""
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(self.shard_path(stage, shard, part)) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        return samples

    def read_stats(self, stage: str) -> list[ShardStats]:
        return [ShardStats.from_row(json.loads(self.stats_path(stage, s).read_text()))
                for s in self.done_shards(stage)]

    def write_summary(self, stage: str) -> dict[str, Any]:
        """Aggregate the per-shard stats of a stage into ``<stage>/summary.json``."""
        stats = self.read_stats(stage)
        rejections: dict[str, int] = {}
        for s in stats:
            for reason, n in s.rejections.items():
                rejections[reason] = rejections.get(reason, 0) + n
        summary = {
            "stage": stage,
            "shards": len(stats),
            "count_in": sum(s.count_in for s in stats),
            "count_out": sum(s.count_out for s in stats),
            "seconds": round(sum(s.seconds for s in stats), 3),
            "rejections": rejections,
        }
        path = self.stage_dir(stage) / "summary.json"
        with self.atomic_path(path) as tmp:
            tmp.write_text(json.dumps(summary, indent=1, sort_keys=True))
        return summary


def placement() -> dict[str, str]:
    """This process's host name and Ray node id ("" outside Ray)."""
    import socket

    node_id = ""
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # Ray absent or not inside a worker
        pass
    return {"host": socket.gethostname(), "node_id": node_id}

"""Export the selected pairs: webdataset shards and a Hugging Face parquet dataset.

  export/webdataset/<split>/pairs-00000.tar   <key>.input.<ext>, <key>.edited.<ext>, <key>.json
  export/webdataset/<split>/sizes.json        {"pairs-00000.tar": n}   (open_clip's convention)
  export/webdataset/sizes.json                {"<split>/pairs-00000.tar": n}
  export/hf/data/<split>-00000-of-00002.parquet  images embedded as bytes (datasets Image feature)
  export/hf/README.md                         dataset card whose configs name the splits
  export/manifest.json                        counts, the selection it came from, what was skipped
The key is the candidate id. Splits are drawn per TRIPLE from (run seed, triple id), never per
pair, so the pairs of one triple never straddle train and test, and a triple keeps its split
across refilters. HF columns are those of the public release (original_prompt,
original_image, edit_prompt, edited_prompt, edited_image), followed by ids and scores.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from datagen.config import PipelineConfig
from datagen.records import stable_id
from datagen.store import RunStore

from .table import STAGE, image_pair, read_scores, read_selection, read_selection_info, stream_samples

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
RELEASE_COLUMNS = ("original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image")
_META_FIELDS = ("candidate_id", "triple_id", "index", "seed", "p", "cfg_scale", "mode", "steps", "model_id",
                "input_caption", "instruction", "output_caption", "edit_kind",
                "sim_0", "sim_1", "sim_image", "sim_direction")


def split_of(triple_id: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """The split of a triple: a uniform draw keyed by (run seed, triple id)."""
    u = int(stable_id("split", seed, triple_id), 16) / 16 ** 16
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + val_fraction else "train"


def hf_features():
    import datasets

    string, f32 = datasets.Value("string"), datasets.Value("float32")
    return datasets.Features({
        "original_prompt": string, "original_image": datasets.Image(), "edit_prompt": string,
        "edited_prompt": string, "edited_image": datasets.Image(),
        "candidate_id": string, "triple_id": string, "edit_kind": string,
        "sim_0": f32, "sim_1": f32, "sim_image": f32, "sim_direction": f32,
    })


def _convert(data: bytes, src_ext: str, fmt: str, quality: int) -> tuple[bytes, str]:
    """Image bytes in ``fmt`` (png|jpg): copied when already so, else re-encoded."""
    if (src_ext in ("jpg", "jpeg")) == (fmt == "jpg"):
        return data, src_ext
    img = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue(), fmt


class _TarShards:
    """Streams samples of one split into pairs-NNNNN.tar files of ``shard_size`` samples."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.sizes: dict[str, int] = {}
        self._tar: tarfile.TarFile | None = None

    def write(self, key: str, files: dict[str, bytes]) -> None:
        if self._tar is None or self.sizes[self._name] >= self.shard_size:
            self.close()
            self.folder.mkdir(parents=True, exist_ok=True)
            self._name = f"pairs-{len(self.sizes):05d}.tar"
            self.sizes[self._name] = 0
            self._tar = tarfile.open(self.folder / self._name, "w")
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime = len(data), 0
            self._tar.addfile(info, io.BytesIO(data))
        self.sizes[self._name] += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self.sizes:
            (self.folder / "sizes.json").write_text(json.dumps(self.sizes, indent=1))


class _ParquetShards:
    """Buffers rows of one split and writes data/<split>-NNNNN.parquet every ``shard_size`` rows."""

    def __init__(self, folder: Path, split: str, shard_size: int):
        self.folder, self.split, self.shard_size = folder, split, shard_size
        self.schema = hf_features().arrow_schema
        self.rows: list[dict[str, Any]] = []
        self.files: list[Path] = []
        self.count = 0

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.split}-{len(self.files):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), path)
        self.files.append(path)
        self.count += len(self.rows)
        self.rows = []

    def close(self) -> list[str]:
        """Flush, then rename to the hub's ``<split>-NNNNN-of-MMMMM.parquet`` names."""
        self._flush()
        names = []
        for i, path in enumerate(self.files):
            final = path.with_name(f"{self.split}-{i:05d}-of-{len(self.files):05d}.parquet")
            path.rename(final)
            names.append(final.name)
        return names


def _dataset_card(splits: dict[str, int], info: dict[str, Any]) -> str:
    configs = "\n".join(f"  - split: {s}\n    path: data/{s}-*.parquet" for s in SPLITS if splits.get(s))
    header = f"---\nconfigs:\n- config_name: default\n  data_files:\n{configs}\n---\n\n" if configs else ""
    return (header + "# editsynth edit pairs\n\n"
            "Instruction-based image-editing pairs (InstructPix2Pix format): `original_image` + `edit_prompt` "
            "-> `edited_image`, with the captions `original_prompt` / `edited_prompt`, the candidate and triple "
            "ids, and the four CLIP filter scores. Splits are drawn per triple.\n\n"
            f"Rows per split: {json.dumps(splits)}\n\n"
            f"Selection: {json.dumps(info.get('thresholds', {}))}, "
            f"max {info.get('max_pairs_per_triple')} pairs per triple.\n\n"
            "diffusers' train_instruct_pix2pix.py: `--original_image_column original_image "
            "--edit_prompt_column edit_prompt --edited_image_column edited_image`.\n")


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def export_run(cfg: PipelineConfig, store: RunStore, out: str | Path | None = None) -> dict[str, Any]:
    """Write the configured export formats of the current selection; return the manifest."""
    e = cfg.export
    out = Path(out) if out else store.root / "export"
    selection = read_selection(store)
    info = read_selection_info(store)
    out.mkdir(parents=True, exist_ok=True)
    tmp = {fmt: out / f".{fmt}.tmp" for fmt in e.formats}
    for path in tmp.values():
        shutil.rmtree(path, ignore_errors=True)
    tars = {s: _TarShards(tmp["webdataset"] / s, e.shard_size) for s in SPLITS} if "webdataset" in tmp else {}
    parquets = {s: _ParquetShards(tmp["hf"] / "data", s, e.shard_size) for s in SPLITS} if "hf" in tmp else {}

    counts, skipped = Counter(), Counter()
    for shard, chosen in selection.groupby("shard", sort=True):
        # One filter shard at a time, its images streamed: memory is bounded by a sample.
        wanted = dict(zip(chosen["candidate_id"], chosen["rank"]))
        rows = read_scores(store, shards=[int(shard)]).set_index("candidate_id")
        errors: list[str] = []
        done = 0
        for cid, sample in stream_samples(store.shard_path(STAGE, int(shard), "tar"), errors):
            pair = image_pair(sample) if cid in wanted else None
            if pair is None:
                continue
            row = rows.loc[cid]
            split = split_of(row["triple_id"], cfg.seed, e.val_fraction, e.test_fraction)
            b_in, ext_in = _convert(pair[0], pair[2], e.image_format, e.jpeg_quality)
            b_out, ext_out = _convert(pair[1], pair[2], e.image_format, e.jpeg_quality)
            meta = {"candidate_id": cid, **{k: _plain(row[k]) for k in _META_FIELDS if k != "candidate_id"},
                    "rank": int(wanted[cid]), "split": split}
            if tars:
                tars[split].write(cid, {f"input.{ext_in}": b_in, f"edited.{ext_out}": b_out,
                                        "json": json.dumps(meta, sort_keys=True).encode()})
            if parquets:
                parquets[split].write({
                    "original_prompt": meta["input_caption"], "original_image": {"bytes": b_in, "path": None},
                    "edit_prompt": meta["instruction"], "edited_prompt": meta["output_caption"],
                    "edited_image": {"bytes": b_out, "path": None}, "candidate_id": cid,
                    "triple_id": meta["triple_id"], "edit_kind": meta["edit_kind"],
                    **{m: meta[m] for m in ("sim_0", "sim_1", "sim_image", "sim_direction")}})
            counts[split] += 1
            done += 1
        if errors:
            log.error("export: filter shard %s: %s", shard, "; ".join(errors))
        if len(wanted) > done:
            skipped["unreadable_filter_shard" if errors else "no_stored_images"] += len(wanted) - done

    manifest: dict[str, Any] = {"pairs": sum(counts.values()), "splits": {s: counts.get(s, 0) for s in SPLITS},
                                "skipped": dict(skipped), "formats": list(e.formats), "image_format": e.image_format,
                                "selection": {k: info.get(k) for k in ("thresholds", "max_pairs_per_triple", "selected",
                                                                       "overrides")}}
    if tars:
        sizes = {}
        for split, writer in tars.items():
            writer.close()
            sizes.update({f"{split}/{name}": n for name, n in writer.sizes.items()})
        tmp["webdataset"].mkdir(parents=True, exist_ok=True)
        (tmp["webdataset"] / "sizes.json").write_text(json.dumps(sizes, indent=1))
        _replace_dir(tmp["webdataset"], out / "webdataset")
        manifest["webdataset"] = {"dir": str(out / "webdataset"), "shards": len(sizes)}
    if parquets:
        files = {split: writer.close() for split, writer in parquets.items()}
        tmp["hf"].mkdir(parents=True, exist_ok=True)
        (tmp["hf"] / "README.md").write_text(_dataset_card(manifest["splits"], info))
        _replace_dir(tmp["hf"], out / "hf")
        manifest["hf"] = {"dir": str(out / "hf"), "files": files}
    with store.atomic_path(out / "manifest.json") as t:
        t.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    if skipped:
        log.warning("export skipped %s", dict(skipped))
    log.info("exported %d pairs to %s: %s", manifest["pairs"], out, manifest["splits"])
    return manifest


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values for JSON."""
    return value.item() if hasattr(value, "item") else value

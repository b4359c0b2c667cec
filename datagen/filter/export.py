"""Export the selected pairs: webdataset shards and a Hugging Face parquet dataset.

  export/webdataset/<split>/pairs-00000.tar   <key>.input.<ext>, <key>.edited.<ext>, <key>.json
  export/webdataset/<split>/sizes.json        {"pairs-00000.tar": n}   (open_clip's convention)
  export/webdataset/sizes.json                {"<split>/pairs-00000.tar": n}
  export/hf/data/<split>-00000-of-00002.parquet  images embedded as bytes (datasets Image feature)
  export/hf/README.md                         dataset card whose configs name the splits
  export/manifest.json                        counts, the selection it came from, what was skipped
  export/units/<split>/export-00000.tar       export shard i: the pairs of filter shard i (written in
  export/units/export-00000.done.json         parallel, Ray tasks), marker written last; the files above
                                              are packed from them in shard order
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
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from datagen.config import PipelineConfig
from datagen.records import stable_id
from datagen.store import RunStore

from .table import SELECTION_FILE, STAGE, image_pair, read_selection, read_selection_info, stream_samples

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
UNITS = "units"   # export shards, one per filter shard: what a re-run reuses
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


def _unit_names(shard: int) -> tuple[dict[str, str], str]:
    """One export shard per filter shard: its pairs of each split, and its done marker (written
    last), named inside the export folder."""
    name = f"export-{shard:05d}"
    return {s: f"{UNITS}/{s}/{name}.tar" for s in SPLITS}, f"{UNITS}/{name}.done.json"


def plan_units(cfg: PipelineConfig, store: RunStore) -> dict[int, dict[str, tuple[int, str]]]:
    """Per filter shard, its selected candidates: ``{candidate_id: (rank, split)}``.

    Read from the selection alone (ids, rank, shard): at paper scale 1.8M rows, not the scores.
    """
    e = cfg.export
    sel = store.read_arrow(f"{STAGE}/{SELECTION_FILE}", columns=["candidate_id", "triple_id", "rank", "shard"])
    triples = pc.unique(sel["triple_id"]).to_pylist()
    split = dict(zip(triples, (split_of(t, cfg.seed, e.val_fraction, e.test_fraction) for t in triples)))
    units: dict[int, dict[str, tuple[int, str]]] = {}
    for cid, tid, rank, shard in zip(*(sel[c].to_pylist() for c in ("candidate_id", "triple_id", "rank", "shard"))):
        units.setdefault(int(shard), {})[cid] = (int(rank), split[tid])
    return dict(sorted(units.items()))


def unit_fingerprint(cfg: PipelineConfig, store: RunStore, shard: int, wanted: dict[str, tuple[int, str]]) -> str:
    """What an export shard is made from: its pairs, their splits and ranks, the image settings, and
    the filter shard's stats (rewritten whenever the filter shard is redone)."""
    stats = store.stats_name(STAGE, shard)
    parts = [sorted(wanted.items()), cfg.export.image_format, cfg.export.jpeg_quality,
             store.read_text(stats) if store.exists(stats) else ""]
    return stable_id(json.dumps(parts, sort_keys=True), length=32)


def export_unit(cfg: PipelineConfig, root: str, out: str, shard: int, wanted: dict[str, tuple[int, str]],
                fingerprint: str) -> dict[str, Any]:
    """Write the pairs of one filter shard, split by split, streaming its image tar once; marker last."""
    e = cfg.export
    store, out_store = RunStore(root), RunStore(out)
    names, marker = _unit_names(shard)
    table = store.read_arrow(store.shard_name(STAGE, shard, "parquet"), columns=list(_META_FIELDS))
    table = table.filter(pc.is_in(table["candidate_id"], pa.array(list(wanted))))
    rows = {r["candidate_id"]: r for r in table.to_pylist()}
    errors: list[str] = []
    counts: Counter = Counter()
    with ExitStack() as stack:
        tars = {}
        for split, name in names.items():
            tmp = stack.enter_context(out_store.writing(name))
            tars[split] = stack.enter_context(tarfile.open(tmp, "w"))
        for cid, sample in stream_samples(store, store.shard_name(STAGE, shard, "tar"), errors):
            pair = image_pair(sample) if cid in wanted and cid in rows else None
            if pair is None:
                continue
            rank, split = wanted[cid]
            b_in, ext_in = _convert(pair[0], pair[2], e.image_format, e.jpeg_quality)
            b_out, ext_out = _convert(pair[1], pair[2], e.image_format, e.jpeg_quality)
            meta = {k: _plain(rows[cid][k]) for k in _META_FIELDS} | {"rank": rank, "split": split}
            for ext, data in ((f"input.{ext_in}", b_in), (f"edited.{ext_out}", b_out),
                              ("json", json.dumps(meta, sort_keys=True).encode())):
                info = tarfile.TarInfo(f"{cid}.{ext}")
                info.size, info.mtime = len(data), 0
                tars[split].addfile(info, io.BytesIO(data))
            counts[split] += 1
    if errors:
        log.error("export: filter shard %s: %s", shard, "; ".join(errors))
    missing = len(wanted) - sum(counts.values())
    done = {"shard": shard, "fingerprint": fingerprint, "pairs": {s: counts.get(s, 0) for s in SPLITS},
            "skipped": {("unreadable_filter_shard" if errors else "no_stored_images"): missing} if missing else {},
            "errors": errors}
    out_store.write_json(marker, done)
    return done


def _run_units(cfg: PipelineConfig, todo: list[tuple]) -> list[dict[str, Any]]:
    """Export shards in parallel as Ray tasks (one CPU each); a single one runs here."""
    if len(todo) <= 1:
        return [export_unit(cfg, *args) for args in todo]
    import ray

    from datagen.distribute import init_ray

    init_ray(cfg.ray_address)
    task = ray.remote(num_cpus=1, max_retries=2)(export_unit)
    return ray.get([task.remote(cfg, *args) for args in todo])


def export_run(cfg: PipelineConfig, store: RunStore, out: str | Path | None = None) -> dict[str, Any]:
    """Write the configured export formats of the current selection; return the manifest.

    Resumable per export shard (= per filter shard): each writes its pairs under ``units/`` and
    then its done marker; a re-run redoes only the export shards whose pairs, splits, image
    settings or filter shard changed (after a refilter: those whose selection changed). The
    final webdataset and HF files are then packed from the export shards, in shard order.
    """
    e = cfg.export
    out = RunStore(out if out else store.url("export"))
    if not store.exists(f"{STAGE}/{SELECTION_FILE}"):
        read_selection(store)   # raises the error that says how to make one
    info = read_selection_info(store)
    out.prepare()
    units = plan_units(cfg, store)
    todo, reused = [], 0
    for shard, wanted in units.items():
        fingerprint = unit_fingerprint(cfg, store, shard, wanted)
        _, marker = _unit_names(shard)
        if out.exists(marker) and json.loads(out.read_text(marker)).get("fingerprint") == fingerprint:
            reused += 1
        else:
            out.remove(marker)
            todo.append((store.location, out.location, shard, wanted, fingerprint))
    log.info("export: %d export shard(s), %d done before, %d to write", len(units), reused, len(todo))
    _run_units(cfg, todo)
    _remove_stale_units(out, set(units))
    with tempfile.TemporaryDirectory(prefix="editsynth-export-") as staging:
        # The packed datasets are written locally, then put in place: beside the export folder
        # on a local run (a rename), in a temp folder for an object store (uploaded).
        manifest = _pack(cfg, out, units, info, Path(out.location) if out.local else Path(staging))
    manifest["export_shards"] = {"total": len(units), "reused": reused, "written": len(todo)}
    out.write_json("manifest.json", manifest)
    if manifest["skipped"]:
        log.warning("export skipped %s", manifest["skipped"])
    log.info("exported %d pairs to %s: %s (export shards: %d written, %d reused)", manifest["pairs"],
             out.location, manifest["splits"], len(todo), reused)
    return manifest


def _pack(cfg: PipelineConfig, out: RunStore, units: dict, info: dict[str, Any], staging: Path) -> dict[str, Any]:
    """Pack the export shards, in shard order, into the configured formats (staged under
    ``staging``, then put in place); return the manifest without the export-shard counts."""
    e = cfg.export
    tmp = {fmt: staging / f".{fmt}.tmp" for fmt in e.formats}
    for path in tmp.values():
        shutil.rmtree(path, ignore_errors=True)
    tars = {s: _TarShards(tmp["webdataset"] / s, e.shard_size) for s in SPLITS} if "webdataset" in tmp else {}
    parquets = {s: _ParquetShards(tmp["hf"] / "data", s, e.shard_size) for s in SPLITS} if "hf" in tmp else {}
    counts, skipped = Counter(), Counter()
    for shard in units:
        names, marker = _unit_names(shard)
        done = json.loads(out.read_text(marker))
        skipped.update(done["skipped"])
        for split, name in names.items():
            errors: list[str] = []
            for cid, sample in stream_samples(out, name, errors):
                meta = json.loads(sample["json"])
                if tars:
                    tars[split].write(cid, sample)
                if parquets:
                    b_in, b_out = (next(v for k, v in sample.items() if k.startswith(part))
                                   for part in ("input.", "edited."))
                    parquets[split].write({
                        "original_prompt": meta["input_caption"], "original_image": {"bytes": b_in, "path": None},
                        "edit_prompt": meta["instruction"], "edited_prompt": meta["output_caption"],
                        "edited_image": {"bytes": b_out, "path": None}, "candidate_id": cid,
                        "triple_id": meta["triple_id"], "edit_kind": meta["edit_kind"],
                        **{m: meta[m] for m in ("sim_0", "sim_1", "sim_image", "sim_direction")}})
                counts[split] += 1
            if errors:
                raise RuntimeError(f"export shard {out.url(name)} is unreadable ({'; '.join(errors)}): "
                                   f"delete {out.url(marker)} and re-run")

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
        manifest["webdataset"] = {"dir": out.replace_tree("webdataset", tmp["webdataset"]), "shards": len(sizes)}
    if parquets:
        files = {split: writer.close() for split, writer in parquets.items()}
        tmp["hf"].mkdir(parents=True, exist_ok=True)
        (tmp["hf"] / "README.md").write_text(_dataset_card(manifest["splits"], info))
        manifest["hf"] = {"dir": out.replace_tree("hf", tmp["hf"]), "files": files}
    return manifest


def _remove_stale_units(out: RunStore, shards: set[int]) -> None:
    """Export shards of filter shards that no longer hold selected pairs."""
    prefix = f"{UNITS}/export-"
    for marker in out.glob(f"{prefix}*.done.json"):
        shard = int(marker[len(prefix):len(prefix) + 5])
        if shard not in shards:
            names, _ = _unit_names(shard)
            out.remove(marker)
            for name in names.values():
                out.remove(name)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python values for JSON."""
    return value.item() if hasattr(value, "item") else value

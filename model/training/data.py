"""Edit pairs for training and evaluation: our webdataset export or a Hugging Face dataset.

Sources
- webdataset shards of the export (Stage 3): ``<key>.input.png|jpg``, ``<key>.edited.png|jpg``
  and ``<key>.json`` (input_caption, instruction, output_caption, edit_kind, ...). A split is
  ``DIR/<split>/*.tar`` (the export's ``export/webdataset/<split>/``; ``export/`` itself works
  too) or ``DIR/*<split>*.tar``; a folder of tars without splits is "train".
- a Hugging Face dataset (hub name, ``save_to_disk`` folder or parquet folder) with the public
  columns original_prompt/original_image/edit_prompt/edited_prompt/edited_image, or the
  diffusers script's input_image/edit_prompt/edited_image.

The training stream is infinite and a pure function of (seed, rank, world size, worker): each
epoch's order comes from the seed, shards are split over ranks and DataLoader workers (by
shard when there are enough, else by sample), and a resumed run skips what it had consumed
without decoding it, so it sees exactly the batches the crashed run would have seen.
"""
from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from datagen.hf_datasets import DatasetOpenError, open_hf_split
from datagen.records import seed_from

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
HF_COLUMN_SETS = (
    # (input image, instruction, edited image, input caption, output caption)
    ("original_image", "edit_prompt", "edited_image", "original_prompt", "edited_prompt"),
    ("input_image", "edit_prompt", "edited_image", None, None),
)


class DataError(ValueError):
    """The dataset path, split or a sample is not usable; the message says which and why."""


@dataclass
class EditExample:
    key: str
    input_image: Image.Image
    edited_image: Image.Image
    instruction: str
    input_caption: str = ""
    output_caption: str = ""
    edit_kind: str = ""


@dataclass
class RawItem:
    """A sample before decoding: skipping one costs no image decode."""

    key: str
    payload: object = field(repr=False)   # {ext: bytes} for webdataset, a row index for HF


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------
class WebdatasetSource:
    def __init__(self, shards: list[str]):
        if not shards:
            raise DataError("no webdataset shards given")
        self.shards = sorted(shards)

    def units(self) -> list[str]:
        return list(self.shards)

    def read_unit(self, shard: str) -> Iterator[RawItem]:
        """Stream the samples of one tar shard in file order (webdataset's tar layout)."""
        from webdataset.gopen import gopen
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        stream = gopen(shard, "rb")
        try:
            files = ({**f, "__url__": shard} for f in tar_file_iterator(stream))
            for sample in group_by_keys(files):
                key = sample.pop("__key__")
                sample.pop("__url__", None)
                yield RawItem(key, sample)
        except Exception as e:  # a truncated or unreadable tar
            raise DataError(f"cannot read webdataset shard {shard}: {e}") from e
        finally:
            stream.close()

    def decode(self, item: RawItem) -> EditExample:
        s = item.payload
        inp = next((s[f"input.{e}"] for e in IMAGE_EXTS if f"input.{e}" in s), None)
        out = next((s[f"edited.{e}"] for e in IMAGE_EXTS if f"edited.{e}" in s), None)
        if inp is None or out is None or "json" not in s:
            raise DataError(f"sample {item.key!r}: expected .input.<img>, .edited.<img> and .json, "
                            f"found {sorted(k for k in s if not k.startswith('__'))}")
        meta = json.loads(s["json"])
        instruction = meta.get("instruction", meta.get("edit_prompt", meta.get("edit")))
        if not instruction:
            raise DataError(f"sample {item.key!r}: its .json has no 'instruction'")
        return EditExample(
            key=item.key, input_image=_open_image(inp, item.key), edited_image=_open_image(out, item.key),
            instruction=instruction,
            input_caption=meta.get("input_caption", meta.get("original_prompt", "")),
            output_caption=meta.get("output_caption", meta.get("edited_prompt", "")),
            edit_kind=meta.get("edit_kind", ""))


class HFSource:
    """Rows of a Hugging Face dataset split; a unit is the whole split (indexed access)."""

    def __init__(self, dataset, name: str, split: str):
        cols = set(dataset.column_names)
        for names in HF_COLUMN_SETS:
            if all(c in cols for c in names[:3]):
                self.columns = names
                break
        else:
            raise DataError(
                f"dataset {name!r} split {split!r} has columns {sorted(cols)}; expected "
                "original_image/edit_prompt/edited_image (public release) or input_image/edit_prompt/edited_image")
        self.dataset, self.name, self.split = dataset, name, split

    def units(self) -> list[str]:
        return ["rows"]

    def __len__(self) -> int:
        return len(self.dataset)

    def read_unit(self, unit: str, order: list[int] | None = None) -> Iterator[RawItem]:
        for i in order if order is not None else range(len(self.dataset)):
            yield RawItem(f"{self.split}-{i:08d}", int(i))

    def decode(self, item: RawItem) -> EditExample:
        row = self.dataset[item.payload]
        c_in, c_instr, c_out, c_incap, c_outcap = self.columns
        return EditExample(
            key=item.key, input_image=_as_pil(row[c_in], item.key), edited_image=_as_pil(row[c_out], item.key),
            instruction=row[c_instr], input_caption=row.get(c_incap, "") if c_incap else "",
            output_caption=row.get(c_outcap, "") if c_outcap else "", edit_kind=row.get("edit_kind") or "")


def _open_image(data: bytes, key: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise DataError(f"sample {key!r}: unreadable image: {e}") from e
    return img.convert("RGB")


def _as_pil(value, key: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and value.get("bytes"):
        return _open_image(value["bytes"], key)
    if isinstance(value, (bytes, bytearray)):
        return _open_image(bytes(value), key)
    raise DataError(f"row {key!r}: image column holds {type(value).__name__}, not an image")


def is_shard_pattern(path: str) -> bool:
    """Whether ``path`` names shards by a glob or brace pattern (``*``, ``?``, ``{a,b}``)."""
    return any(ch in path for ch in "*?{")


def find_shards(path: str, split: str) -> list[str] | None:
    """The tar shards of ``split`` under ``path``, or None when ``path`` is not webdataset."""
    if is_shard_pattern(path) or path.endswith(".tar"):
        import braceexpand

        found = []
        for pattern in braceexpand.braceexpand(path):
            matched = glob.glob(pattern)
            if not matched and "{" in path and not any(ch in pattern for ch in "*?"):
                matched = [pattern]  # a brace-expanded plain name or URL: webdataset opens it as it is
            if not matched:  # one empty glob would silently drop a whole part of the data
                raise DataError(f"no shards match {pattern!r}" + (f" (from {path!r})" if pattern != path else ""))
            found.extend(matched)
        return sorted(found)
    root = Path(path)
    if not root.is_dir():
        return None
    if (root / "webdataset").is_dir():  # the export folder itself: export/webdataset/<split>/
        root = root / "webdataset"
    split_dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.tar")))
    if split_dirs:
        if split not in split_dirs:
            raise DataError(f"{root} has the splits {split_dirs}, not {split!r}")
        return sorted(str(p) for p in (root / split).glob("*.tar"))
    tars = sorted(str(p) for p in root.glob("*.tar"))
    named = [t for t in tars if split in Path(t).name]
    if named:
        return named
    if tars and not any(s in Path(t).name for t in tars for s in ("train", "validation", "test")):
        if split == "train":
            return tars
        raise DataError(f"{path} holds webdataset shards without splits, so it has no {split!r} split "
                        f"(expected {path}/{split}/*.tar or *{split}*.tar); use split 'train' to read them all")
    return None


def count_pairs(source) -> int | None:
    """How many pairs ``source`` holds: the rows of a Hugging Face split, or the sample keys of
    local tar shards, read from the tar headers alone (no image decoded); None for remote shards."""
    if isinstance(source, HFSource):
        return len(source)
    import tarfile

    from webdataset.tariterators import base_plus_ext

    total = 0
    for shard in source.shards:
        if not Path(shard).is_file():  # a URL: counting it would download it
            return None
        try:
            with tarfile.open(shard) as tar:
                keys = {base_plus_ext(member.name)[0] for member in tar if member.isfile()}
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot read webdataset shard {shard}: {e}") from e
        total += len(keys - {None})
    return total


def open_source(path: str, split: str = "train"):
    """A WebdatasetSource or HFSource for ``path`` (directory, tar pattern, or HF dataset name)."""
    if not path:
        raise DataError("no dataset given: set train.data or pass --data DIR_OR_HF_NAME")
    shards = find_shards(path, split)
    if shards:
        return WebdatasetSource(shards)
    return HFSource(_load_hf(path, split), path, split)


def _load_hf(path: str, split: str):
    try:
        return open_hf_split(path, split)
    except DatasetOpenError as e:
        if e.about == "split":
            raise DataError(str(e)) from None
        raise DataError(f"cannot open {path!r} as webdataset shards or a Hugging Face dataset: {e}") from None


# ---------------------------------------------------------------------------------------
# Augmentation: the same random crop and flip for both images
# ---------------------------------------------------------------------------------------
def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def swap_words(text: str, pairs: Sequence[Sequence[str]]) -> str:
    """``text`` with each word of every pair replaced by the other ("left" <-> "right"), whole
    words only, capitals kept."""
    other = {}
    for a, b in pairs:
        other[a.lower()], other[b.lower()] = b.lower(), a.lower()
    if not other:
        return text

    def swap(m: re.Match) -> str:
        found = m.group(0)
        word = other[found.lower()]
        if found.isupper() and len(found) > 1:
            return word.upper()
        return word.capitalize() if found[0].isupper() else word

    return re.sub(r"\b(" + "|".join(map(re.escape, other)) + r")\b", swap, text, flags=re.IGNORECASE)


def prepare_pair(example: EditExample, resolution: int, rng: random.Random, random_flip: bool = True,
                 center_crop: bool = False, flip_swap_words: Sequence[Sequence[str]] = ()
                 ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Resize the short side to ``resolution``, crop a square, maybe flip: one draw for both.

    Returns the two images and the instruction, whose ``flip_swap_words`` swap when the pair is
    flipped: a mirrored "make the left circle red" asks for the right one."""
    instruction = example.instruction
    inp, out = example.input_image, example.edited_image
    if out.size != inp.size:
        out = out.resize(inp.size, Image.BICUBIC)
    w, h = inp.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        inp, out = inp.resize(size, Image.BICUBIC), out.resize(size, Image.BICUBIC)
    w, h = size
    if center_crop:
        left, top = (w - resolution) // 2, (h - resolution) // 2
    else:
        left, top = rng.randint(0, w - resolution), rng.randint(0, h - resolution)
    box = (left, top, left + resolution, top + resolution)
    inp, out = inp.crop(box), out.crop(box)
    if random_flip and rng.random() < 0.5:
        inp, out = inp.transpose(Image.FLIP_LEFT_RIGHT), out.transpose(Image.FLIP_LEFT_RIGHT)
        instruction = swap_words(instruction, flip_swap_words)
    return to_tensor(inp), to_tensor(out), instruction


# ---------------------------------------------------------------------------------------
# The training stream
# ---------------------------------------------------------------------------------------
def _shuffled(items: Iterator[RawItem], buffer: int, rng: random.Random) -> Iterator[RawItem]:
    """A streaming shuffle (webdataset's buffer shuffle), deterministic for a given rng."""
    buf: list[RawItem] = []
    for item in items:
        if len(buf) < buffer:
            buf.append(item)
            continue
        j = rng.randrange(len(buf))
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


def reader_items(source, seed: int, epoch: int, reader: int, num_readers: int,
                 shuffle_buffer: int) -> Iterator[RawItem]:
    """The undecoded items one reader (rank x worker) sees in one epoch, in order."""
    units = source.units()
    random.Random(seed_from(seed, "unit-order", epoch)).shuffle(units)
    if isinstance(source, HFSource):
        order = list(range(len(source)))
        random.Random(seed_from(seed, "row-order", epoch)).shuffle(order)
        yield from source.read_unit(units[0], order[reader::num_readers])
        return
    if 1 < num_readers <= len(units):
        # Split by node and worker at the shard level, as webdataset's split_by_node/worker do.
        mine = units[reader::num_readers]
        stream = (it for u in mine for it in source.read_unit(u))
        yield from _shuffled(stream, shuffle_buffer, random.Random(seed_from(seed, "shuffle", epoch, reader)))
        return
    # One reader, or fewer shards than readers: all read every shard, shuffle alike, and
    # reader r keeps positions r, r + n, ...: n ranks x batch B/n see what 1 x B would.
    stream = (it for u in units for it in source.read_unit(u))
    for j, item in enumerate(_shuffled(stream, shuffle_buffer, random.Random(seed_from(seed, "shuffle", epoch)))):
        if j % num_readers == reader:
            yield item


@dataclass
class TrainSample:
    original: torch.Tensor
    edited: torch.Tensor
    instruction: str
    seed: int          # key of this occurrence's random draws (noise, timestep, dropout)


class EditPairStream(torch.utils.data.IterableDataset):
    """Infinite stream of augmented pairs for one rank; DataLoader workers split it further.

    ``skip_batches`` is how many batches of ``batch_size`` this rank consumed before (resume):
    each worker skips its share of them without decoding.
    """

    def __init__(self, source, resolution: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, random_flip: bool = True, center_crop: bool = False,
                 batch_size: int = 1, skip_batches: int = 0, flip_swap_words: Sequence[Sequence[str]] = ()):
        self.source, self.resolution, self.seed = source, resolution, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.random_flip, self.center_crop = shuffle_buffer, random_flip, center_crop
        self.flip_swap_words = flip_swap_words
        self.batch_size, self.skip_batches = batch_size, skip_batches

    def __iter__(self) -> Iterator[TrainSample]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader takes batches from its workers round-robin, starting at worker 0:
        # batch i came from worker i % w. After n consumed batches the next one is batch n,
        # so a resumed worker k plays the part of worker (k + n) % w and skips what that
        # worker had made: the batches i < n with i % w == its part.
        n = self.skip_batches
        part = (worker + n) % num_workers
        skip = (max(0, n - part) + num_workers - 1) // num_workers * self.batch_size
        reader = self.rank * num_workers + part
        num_readers = self.world_size * num_workers
        epoch = 0
        while True:
            count = 0
            for item in reader_items(self.source, self.seed, epoch, reader, num_readers, self.shuffle_buffer):
                count += 1
                if skip:
                    skip -= 1
                    continue
                occurrence = seed_from(self.seed, item.key, epoch)
                example = self.source.decode(item)
                original, edited, instruction = prepare_pair(
                    example, self.resolution, random.Random(occurrence), self.random_flip, self.center_crop,
                    self.flip_swap_words)
                yield TrainSample(original, edited, instruction, occurrence)
            if count == 0:
                raise DataError(f"reader {reader} of {num_readers} got no samples: the dataset is empty "
                                "or has fewer samples than ranks x dataloader workers")
            epoch += 1


def collate(samples: list[TrainSample]) -> dict:
    return {
        "original": torch.stack([s.original for s in samples]),
        "edited": torch.stack([s.edited for s in samples]),
        "instructions": [s.instruction for s in samples],
        "seeds": [s.seed for s in samples],
    }


def load_examples(path: str, split: str, limit: int, seed: int = 0) -> list[EditExample]:
    """Up to ``limit`` decoded examples of a split, a fixed random subset (for evaluation)."""
    source = open_source(path, split)
    items = list(itertools.islice(reader_items(source, seed, 0, 0, 1, shuffle_buffer=max(limit * 4, 100)), limit))
    if not items:
        raise DataError(f"{path!r} split {split!r} holds no samples")
    return [source.decode(it) for it in items]

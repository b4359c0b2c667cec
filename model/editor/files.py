"""``editsynth edit``: edit image files — one image, variations, a chain of instructions, a folder.

A chain applies its instructions in order, each to the last result, at the model's edit size
(no resizing between steps); every step is saved beside the final result. A folder is edited
in batches; an image that cannot be read is reported and skipped, the others still get done,
and a rerun skips images whose outputs exist (unless --overwrite).

Output names, for ``-o out.png``: ``out.png`` (the final result), ``out-step1.png`` ... for a
chain, ``out-v1.png`` ... for variations (``out-v1-step1.png`` for both). For a folder, ``-o`` is
a directory and each input ``name.ext`` gives ``name.png`` there, with the same suffixes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from model.editor.images import ImageRejected, UploadLimits, fit_for_edit, read_upload
from model.editor.loading import Editor
from model.editor.sampling import EditSettings, edit_images

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# Local files are the user's own: looser than the server's limits, same checks and messages.
LOCAL_LIMITS = UploadLimits(max_bytes=1 << 30, max_pixels=400_000_000)


@dataclass
class EditReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)


def list_inputs(path: Path) -> list[Path]:
    """The image files to edit: the file itself, or a folder's images (sorted, not recursive)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"input image not found: {path}")
    return [path]


def output_paths(final: Path, variations: int, chain_length: int) -> list[list[Path]]:
    """Per variation: the paths of each chain step, the last being the variation's final result."""
    paths = []
    for v in range(variations):
        stem = final.stem if variations == 1 else f"{final.stem}-v{v + 1}"
        last = final.with_name(stem + final.suffix)
        steps = [final.with_name(f"{stem}-step{j + 1}{final.suffix}") for j in range(chain_length - 1)]
        paths.append(steps + [last])
    return paths


def edit_chain(editor: Editor, images: list[Image.Image], instructions: list[str], settings: EditSettings,
               seeds: list[int]) -> list[list[Image.Image]]:
    """Apply the instructions in order to each image; returns each image's results, step by step,
    at the edit size (the caller resizes for saving)."""
    resolution = settings.resolution or editor.native_resolution
    current = [fit_for_edit(im, resolution, editor.size_multiple) for im in images]
    steps: list[list[Image.Image]] = [[] for _ in images]
    for instruction in instructions:
        current = edit_images(editor, current, instruction, settings, seeds)
        for i, im in enumerate(current):
            steps[i].append(im)
    return steps


def edit_files(editor: Editor, source: Path, output: Path, instructions: list[str], settings: EditSettings,
               variations: int = 1, overwrite: bool = False) -> EditReport:
    """Edit one file or every image of a folder; writes results and reports what happened."""
    if not instructions:
        raise ValueError("give at least one instruction")
    if variations < 1:
        raise ValueError(f"variations must be >= 1, got {variations}")
    inputs = list_inputs(source)
    folder = source.is_dir()
    if folder:
        if output.exists() and not output.is_dir():
            raise NotADirectoryError(f"the input is a folder, so -o must be a folder; {output} is a file")
        output.mkdir(parents=True, exist_ok=True)
    elif output.suffix.lower() not in {".png", ".jpg", ".jpeg", ".webp"}:
        raise ValueError(f"output {output}: use a .png, .jpg or .webp file name")
    else:
        output.parent.mkdir(parents=True, exist_ok=True)

    report = EditReport()
    todo: list[tuple[Path, list[list[Path]]]] = []
    for path in inputs:
        final = output / f"{path.stem}.png" if folder else output
        outs = output_paths(final, variations, len(instructions))
        if folder and not overwrite and all(p[-1].exists() for p in outs):
            report.skipped.append(path)
            continue
        todo.append((path, outs))

    # A group of whole images (with all their variations) at a time: results are written as they
    # come, so an interruption loses at most one group.
    group = max(1, settings.batch_size // variations)
    for start in range(0, len(todo), group):
        images, sizes, outs_of = [], [], []
        for path, outs in todo[start : start + group]:
            try:
                im = read_upload(path.read_bytes(), LOCAL_LIMITS)
            except (ImageRejected, OSError) as e:
                log.error("skipping %s: %s", path, e)
                report.failed[path] = str(e)
                continue
            images += [im] * variations
            sizes += [im.size] * variations
            outs_of += outs
        if not images:
            continue
        seeds = [settings.seed + k for _ in range(len(images) // variations) for k in range(variations)]
        results = edit_chain(editor, images, instructions, settings, seeds)
        for steps, size, paths, seed in zip(results, sizes, outs_of, seeds):
            for j, (im, dest) in enumerate(zip(steps, paths)):
                im = im if im.size == size else im.resize(size, Image.Resampling.LANCZOS)
                im.save(dest)
                report.written.append(dest)
                log.info("%s  step %d \u201c%s\u201d  seed %d", dest, j + 1, instructions[j], seed)
    return report

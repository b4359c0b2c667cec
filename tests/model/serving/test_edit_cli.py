"""``editsynth edit``: one image, a chain, variations, a folder (model/editor/files.py, model/serving/cli.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model.editor.loading import load_editor
from model.editor.sampling import EditSettings, edit_images
from model.serving.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def editor(tiny_editor_dir):
    return load_editor(str(tiny_editor_dir), device="cpu")


def write_image(path, w=50, h=40, seed=0):
    Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)).save(path)
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


def same(a, b) -> bool:
    return np.abs(a - b).max() <= 1


def run(model_dir, *args) -> int:
    return main(["edit", *map(str, args), "--model", str(model_dir), "--steps", "2", "--device", "cpu"])


def test_edit_writes_the_result_at_the_inputs_size(tiny_editor_dir, editor, tmp_path):
    src = write_image(tmp_path / "in.png", 50, 40)
    assert run(tiny_editor_dir, src, "make it red", "-o", tmp_path / "out.png", "--seed", 5) == 0
    out = Image.open(tmp_path / "out.png")
    assert out.size == (50, 40)
    expected = edit_images(editor, [Image.open(src)], "make it red", EditSettings(steps=2, seed=5))[0]
    assert same(pixels(tmp_path / "out.png"), np.asarray(expected, np.int16))


def test_a_chain_applies_each_instruction_to_the_last_result_and_saves_every_step(
        tiny_editor_dir, editor, tmp_path):
    src = write_image(tmp_path / "in.png", 32, 32)
    assert run(tiny_editor_dir, src, "make it red", "add a hat", "-o", tmp_path / "out.png") == 0
    assert sorted(p.name for p in tmp_path.glob("out*.png")) == ["out-step1.png", "out.png"]
    s = EditSettings(steps=2)
    step1 = edit_images(editor, [Image.open(src)], "make it red", s)[0]
    step2 = edit_images(editor, [step1], "add a hat", s)[0]
    assert same(pixels(tmp_path / "out-step1.png"), np.asarray(step1, np.int16))
    assert same(pixels(tmp_path / "out.png"), np.asarray(step2, np.int16))
    assert not same(pixels(tmp_path / "out.png"), pixels(tmp_path / "out-step1.png"))


def test_variations_use_consecutive_seeds(tiny_editor_dir, editor, tmp_path):
    src = write_image(tmp_path / "in.png", 32, 32)
    assert run(tiny_editor_dir, src, "x", "-o", tmp_path / "out.png", "--variations", 2, "--seed", 3) == 0
    v1, v2 = pixels(tmp_path / "out-v1.png"), pixels(tmp_path / "out-v2.png")
    assert not same(v1, v2)
    seed4 = edit_images(editor, [Image.open(src)], "x", EditSettings(steps=2, seed=4))[0]
    assert same(v2, np.asarray(seed4, np.int16))


def test_a_folder_is_edited_in_batches_bad_files_reported_and_a_rerun_skips_done_work(
        tiny_editor_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"im{i}.png", 30 + 10 * i, 40, seed=i)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image, not picked up")
    out = tmp_path / "out"
    assert run(tiny_editor_dir, folder, "make it red", "-o", out, "--batch-size", 2) == 1   # one failure
    assert sorted(p.name for p in out.iterdir()) == ["im0.png", "im1.png", "im2.png"]
    assert all(Image.open(out / f"im{i}.png").size == (30 + 10 * i, 40) for i in range(3))
    assert "broken.png" in capsys.readouterr().err

    (folder / "broken.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run(tiny_editor_dir, folder, "make it red", "-o", out) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before   # nothing redone
    assert "skipped 3 already done" in capsys.readouterr().out


def test_bad_input_gets_a_clear_error(tiny_editor_dir, tmp_path, capsys):
    assert run(tiny_editor_dir, tmp_path / "missing.png", "x") == 2
    assert "input image not found" in capsys.readouterr().err
    src = write_image(tmp_path / "in.png")
    assert main(["edit", str(src), "x", "--model", str(tmp_path / "no-model")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    assert run(tiny_editor_dir, src, "x", "-o", tmp_path / "out.gif") == 2
    assert "use a .png, .jpg or .webp" in capsys.readouterr().err

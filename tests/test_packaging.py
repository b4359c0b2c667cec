"""editsynth as a package: a wheel built from the checkout carries pipelines.yaml and every shipped
file, and `editsynth` runs a pipeline from a directory outside the checkout after a plain install."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checkout_files() -> list[str]:
    """What a fresh clone would hold: tracked files and new ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).exists() or (ROOT / f).is_symlink()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    # Build from a copy, so setuptools' build/ and egg-info never land in the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in _checkout_files():
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_symlink():
            target.symlink_to(os.readlink(ROOT / name))
        else:
            shutil.copy2(ROOT / name, target)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(src)], check=True, capture_output=True, timeout=600)
    (built,) = dist.glob("editsynth-*.whl")
    return built


def test_the_wheel_carries_pipelines_yaml_and_every_shipped_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "datagen/pipelines.yaml" in names
    with zipfile.ZipFile(wheel) as z:   # the file itself, not a dangling link
        assert z.read("datagen/pipelines.yaml") == (ROOT / "pipelines.yaml").read_bytes()
    shipped = [f for f in _checkout_files()
               if f.startswith(("datagen/", "model/", "shapes_lab/")) and not f.endswith(".py")]
    missing = [f for f in shipped if f not in names]
    assert not missing, missing
    for module in ("editsynth_cli.py", "run_generation.py", "train_editor.py", "shapes_lab/cli.py"):
        assert module in names


def test_editsynth_runs_a_pipeline_outside_the_checkout_after_a_plain_install(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import datagen, model, shapes_lab; "
                            "print(datagen.__file__, model.__file__, shapes_lab.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(f).is_relative_to(target) for f in where), where   # the installed copy, not the checkout
    run = subprocess.run([str(target / "bin" / "editsynth"), "generate", "--pipeline", "shapes", "--out", "run",
                          "--set", "captions.num_triples=4", "--set", "captions.shard_size=4",
                          "--set", "render.num_candidates=1", "--set", "render.steps=2"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    assert summary["captions"]["count_out"] == 4 and summary["render"]["count_out"] == 4
    assert (elsewhere / "run" / "filter" / "selection.parquet").exists()
    assert json.loads((elsewhere / "run" / "config.json").read_text())["name"] == "shapes"

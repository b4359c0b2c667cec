"""scripts/shapes_editor_round.sh up to the retrain: what it counts, and RENDER_ONLY stopping there.

Rendering and retraining are the real commands the rest of the suite tests; here no seed is given,
so the script renders nothing, and RENDER_ONLY=1 must stop it before it trains anything.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.model.train_helpers import shapes_pairs, write_shards

REPO = Path(__file__).resolve().parents[2]


def test_render_only_counts_the_finished_datasets_and_trains_nothing(tmp_path):
    write_shards(tmp_path / "data1" / "export", shapes_pairs(5, seed=1), split="train")
    write_shards(tmp_path / "data2" / "export", shapes_pairs(3, seed=2), num_shards=2, split="train")
    out = tmp_path / "editor"
    env = dict(os.environ, SEEDS="", RENDER_ONLY="1", RENDER_DTYPE="float32",
               DATA=f"{tmp_path}/data{{1..3}}/export/train/*.tar")   # data3: not rendered yet
    done = subprocess.run(["bash", "scripts/shapes_editor_round.sh", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "finished datasets hold 8 (2 of the 3 datasets DATA names are finished) now" in done.stdout
    assert "RENDER_ONLY=1 stops before the retrain" in done.stdout
    assert not out.exists()

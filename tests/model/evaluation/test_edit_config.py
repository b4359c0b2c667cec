"""An editor's own guidance (edit_config.json): chosen on validation scenes by `editsynth edit-config`,
used by edit, serve and eval unless they are told otherwise."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

import editsynth_cli
from model.editor.loading import EDIT_CONFIG_FILE, EditorLoadError, load_editor
from model.editor.sampling import PAPER_GUIDANCE, EditSettings
from model.evaluation import oracle, results
from tests.model.conftest import scales_of

pytestmark = pytest.mark.usefixtures("one_thread")


def oracle_eval(scenes="validation", sweep=(), sdedit=()):
    """The parts of an oracle_edit.json that choosing reads: (s_T, s_I, edit, kept, both) per point."""
    rates = lambda e, k, b: {"edit_accuracy": e, "preservation": k, "edit_correct": b}  # noqa: E731
    return {"scenes": scenes, "num_scenes": 20, "seed": 0, "steps": 20, "editor": "",
            "scheduler": "EulerAncestralDiscreteScheduler",
            "image_guidance_sweep": [{"text_guidance_scale": t, "image_guidance_scale": i, **rates(e, k, b)}
                                     for t, i, e, k, b in sweep],
            "sdedit_strength_sweep": [{"sdedit_strength": s, **rates(e, k, b)} for s, e, k, b in sdedit]}


@pytest.fixture
def own_editor_dir(tiny_editor_dir, tmp_path):
    """A copy of the tiny editor that a test may give an edit_config.json."""
    return shutil.copytree(tiny_editor_dir, tmp_path / "editor")


def test_open_scales_come_from_the_editor_else_the_paper_and_given_ones_stay():
    tuned = SimpleNamespace(edit_defaults={"image_guidance": 4.0})
    assert EditSettings().for_editor(None) == EditSettings(**PAPER_GUIDANCE)
    assert EditSettings().for_editor(tuned) == EditSettings(text_guidance=7.5, image_guidance=4.0)
    assert EditSettings(image_guidance=2.0).for_editor(tuned).image_guidance == 2.0
    assert EditSettings(text_guidance=0.0).for_editor(tuned).text_guidance == 0.0   # 0 is a value, not "open"
    with pytest.raises(ValueError, match="guidance scales must be >= 0"):
        EditSettings(text_guidance=-1.0)


def test_choosing_takes_the_most_edits_kept_on_validation_scenes_only():
    result = oracle_eval(sweep=[(7.5, 1.5, .70, .75, .55), (7.5, 4.0, .68, .86, .60), (4.0, 4.0, .62, .93, .60)],
                         sdedit=[(0.4, .50, .99, .50), (0.6, .80, .97, .78)])
    chosen = results.choose_guidance([result])
    # Both 4.0 settings keep as many edits; the one that makes more of them wins the tie.
    assert (chosen["text_guidance"], chosen["image_guidance"]) == (7.5, 4.0)
    assert chosen["validation"] == {"edit_accuracy": .68, "preservation": .86, "edit_correct": .60}
    assert chosen["sdedit_strength"] == 0.6
    # A second eval of the same scenes widens the grid beyond its edge.
    wider = oracle_eval(sweep=[(7.5, 6.0, .66, .92, .62)], sdedit=[(0.9, .9, .95, .86)])
    chosen = results.choose_guidance([result, wider])
    assert (chosen["image_guidance"], chosen["sdedit_strength"]) == (6.0, 0.9)
    with pytest.raises(results.NotForChoosing, match="cannot be pooled"):
        results.choose_guidance([result, {**wider, "steps": 50}])
    with pytest.raises(results.NotForChoosing, match="test scenes"):
        results.choose_guidance([result, {**wider, "scenes": "test"}])
    with pytest.raises(results.NotForChoosing, match="test scenes"):
        results.choose_guidance([{k: v for k, v in result.items() if k != "scenes"}])   # evals before "scenes"
    with pytest.raises(results.NotForChoosing, match="no guidance sweep"):
        results.choose_guidance([oracle_eval()])


def test_edit_config_command_writes_what_load_editor_reads(own_editor_dir, tmp_path, capsys):
    evals = tmp_path / "val"
    evals.mkdir()
    (evals / results.ORACLE_FILE).write_text(json.dumps(oracle_eval(sweep=[(7.5, 1.5, .7, .7, .5), (4.0, 2.5, .6, .9, .55)])))
    assert editsynth_cli.main(["edit-config", str(own_editor_dir), "--from", str(evals)]) == 0
    assert "s_T 4 / s_I 2.5" in capsys.readouterr().out
    written = json.loads((own_editor_dir / EDIT_CONFIG_FILE).read_text())
    assert written["chosen_on"]["scenes"] == "validation" and written["chosen_on"]["edit_correct"] == .55
    assert load_editor(str(own_editor_dir), device="cpu").edit_defaults == {"text_guidance": 4.0, "image_guidance": 2.5}

    # An eval of the test scenes is refused and nothing is touched.
    (evals / results.ORACLE_FILE).write_text(json.dumps(oracle_eval(scenes="test", sweep=[(7.5, 9.0, 1, 1, 1)])))
    assert editsynth_cli.main(["edit-config", str(own_editor_dir), "--from", str(evals)]) == 2
    assert "choose on the validation scenes" in capsys.readouterr().err
    assert json.loads((own_editor_dir / EDIT_CONFIG_FILE).read_text()) == written


def test_edit_says_which_guidance_it_used_and_the_editors_own_applies(own_editor_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from model.serving.cli import main

    src = tmp_path / "in.png"
    Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype(np.uint8)).save(src)
    edit = lambda *extra: main(["edit", str(src), "make it red", "-o", str(tmp_path / "out.png"), "--overwrite",  # noqa: E731
                                "--model", str(own_editor_dir), "--steps", "2", "--device", "cpu", *extra])
    assert edit() == 0 and "s_T 7.5 / s_I 1.5 (unless given: the paper's defaults)" in capsys.readouterr().out
    paper = np.asarray(Image.open(tmp_path / "out.png"))
    (own_editor_dir / EDIT_CONFIG_FILE).write_text(json.dumps({"image_guidance": 4.0}))
    assert edit() == 0 and "s_T 7.5 / s_I 4 (unless given: the model's edit_config.json)" in capsys.readouterr().out
    own = np.asarray(Image.open(tmp_path / "out.png"))
    assert edit("--image-guidance", "1.5") == 0 and "s_I 1.5" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), paper) and not np.array_equal(own, paper)


def test_a_broken_edit_config_names_the_file(own_editor_dir):
    (own_editor_dir / EDIT_CONFIG_FILE).write_text('{"image_guidance": "lots"}')
    with pytest.raises(EditorLoadError, match=f"{EDIT_CONFIG_FILE}: not a valid edit config"):
        load_editor(str(own_editor_dir), device="cpu")
    (own_editor_dir / EDIT_CONFIG_FILE).write_text('{"image_guidance": -2}')
    with pytest.raises(EditorLoadError, match="must be >= 0"):
        load_editor(str(own_editor_dir), device="cpu")


def test_eval_headline_and_served_defaults_follow_the_editors_own_guidance(own_editor_dir, tmp_path, editor_passes):
    from fastapi.testclient import TestClient

    from datagen.config import load_config
    from model.serving.server import ServeConfig, create_app

    (own_editor_dir / EDIT_CONFIG_FILE).write_text(json.dumps({"text_guidance": 5.0, "image_guidance": 3.0}))
    cfg = load_config("shapes", ["train.eval.oracle_num_scenes=2", "train.eval.steps=1",
                                 "train.eval.oracle_image_guidance_sweep=[]",
                                 "train.eval.oracle_seen_phrasing=false", "train.eval.oracle_unseen_vocabulary=false"]).train.eval
    result = oracle.evaluate_oracle(str(own_editor_dir), cfg, tmp_path / "own", base_model=None)
    assert scales_of(editor_passes) == [(5.0, 3.0)] and result["guidance_from"] == "edit_config.json"
    assert (result["text_guidance_scale"], result["image_guidance_scale"]) == (5.0, 3.0)
    # A scale the config gives wins over the editor's; one it leaves open still comes from the editor.
    result = oracle.evaluate_oracle(str(own_editor_dir), cfg.model_copy(update={"oracle_image_guidance": 1.5}),
                               tmp_path / "given", base_model=None)
    assert scales_of(editor_passes)[-1] == (5.0, 1.5) and result["guidance_from"] == "edit_config.json"

    (own_editor_dir / EDIT_CONFIG_FILE).write_text(json.dumps({"text_guidance": 5.0, "image_guidance": 6.0}))
    client = TestClient(create_app(load_editor(str(own_editor_dir), device="cpu"), ServeConfig()))
    defaults = client.get("/api/model").json()["defaults"]
    assert (defaults["text_guidance"], defaults["image_guidance"]) == (5.0, 6.0)
    # The UI's sliders start there, and their ranges hold it (the paper's s_I range ends at 5).
    sliders = {c["props"].get("elem_id"): c["props"] for c in client.get("/ui/config").json()["components"]
               if c.get("type") == "slider"}
    assert sliders["text-guidance"]["value"] == 5.0
    assert sliders["image-guidance"]["value"] == 6.0 <= sliders["image-guidance"]["maximum"]

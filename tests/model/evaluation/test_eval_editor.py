"""Evaluation: the guidance sweep (JSON + plot) against SDEdit, the shapes oracle."""
from __future__ import annotations

import json

import pytest
from PIL import Image

import editsynth_cli
from model.evaluation import clip_sweep, oracle, results, sdedit
from tests.model.conftest import scales_of
from tests.model.train_helpers import shapes_pairs, write_shards

pytestmark = pytest.mark.usefixtures("one_thread")



def test_eval_writes_the_sweep_json_and_plot_with_the_sdedit_baseline(tmp_path, tiny_editor_dir, tiny_sd_dir,
                                                                     tiny_clip_dir):
    write_shards(tmp_path / "data", shapes_pairs(4, seed=9), num_shards=1, split="test")
    out = tmp_path / "eval"
    rc = editsynth_cli.main([
        "eval", "--editor", str(tiny_editor_dir), "--data", str(tmp_path / "data"), "--out", str(out),
        "--base-model", str(tiny_sd_dir),
        "--set", f"train.eval.clip_model=local-dir:{tiny_clip_dir}", "--set", "train.eval.clip_pretrained=",
        "--set", "train.eval.num_examples=3", "--set", "train.eval.steps=2",
        "--set", "train.eval.image_guidance_scales=[1.0,1.6,2.2]", "--set", "train.eval.sdedit_strengths=[0.5,0.9]",
    ])
    assert rc == 0
    result = json.loads((out / clip_sweep.SWEEP_FILE).read_text())
    assert result["num_examples"] == 3 and result["split"] == "test" and result["text_guidance_scale"] == 7.5
    assert [p["image_guidance_scale"] for p in result["editor_sweep"]] == [1.0, 1.6, 2.2]
    assert [p["strength"] for p in result["sdedit"]] == [0.5, 0.9]
    for p in result["editor_sweep"] + result["sdedit"]:
        assert -1 <= p["clip_directional_similarity"] <= 1 and -1 <= p["clip_image_similarity"] <= 1
    plot = Image.open(out / clip_sweep.PLOT_FILE)
    assert plot.format == "PNG" and plot.size[0] > 300
    # Different settings give different edits (the sweep is not a constant).
    sims = {round(p["clip_image_similarity"], 6) for p in result["editor_sweep"] + result["sdedit"]}
    assert len(sims) > 1


def test_oracle_eval_judges_editor_sdedit_and_identity_per_edit_kind(tmp_path, tiny_editor_dir, tiny_sd_dir):
    from datagen.config import load_config
    from datagen.shapes.grammar import EDIT_KINDS

    cfg = load_config("shapes", ["train.eval.oracle_num_scenes=7", "train.eval.steps=2"]).train.eval
    result = oracle.evaluate_oracle(str(tiny_editor_dir), cfg, tmp_path, base_model=str(tiny_sd_dir))
    saved = json.loads((tmp_path / results.ORACLE_FILE).read_text())
    assert saved == json.loads(json.dumps(result))
    for key in ("edit_accuracy", "preservation", "sdedit_edit_accuracy", "sdedit_preservation",
                "identity_edit_accuracy", "identity_preservation"):
        assert 0.0 <= saved[key] <= 1.0
    for p in ("", "sdedit_", "identity_"):   # un-named facts kept too: never more than without them
        assert saved[p + "preservation_full"] <= saved[p + "preservation"]
        assert saved[p + "edit_correct_full"] <= saved[p + "edit_correct"]
    assert saved["identity_preservation_full"] == 1.0
    assert set(saved["by_edit_kind"]) == set(EDIT_KINDS)
    assert all(v["n"] == 1 for v in saved["by_edit_kind"].values())
    # Doing nothing keeps everything and makes no edit: the oracle sees exactly that on renders.
    assert saved["identity_preservation"] == 1.0 and saved["identity_edit_accuracy"] == 0.0
    assert (tmp_path / "oracle_examples.png").exists()


def test_oracle_eval_sweeps_image_and_text_guidance_beside_the_headline_setting(tmp_path, tiny_editor_dir,
                                                                                editor_passes):
    from datagen.config import load_config

    cfg = load_config("shapes", ["train.eval.oracle_num_scenes=3", "train.eval.steps=2",
                                 "train.eval.oracle_text_guidance=7.5", "train.eval.oracle_image_guidance=1.5",
                                 "train.eval.oracle_image_guidance_sweep=[1.5,3.0]",
                                 "train.eval.oracle_text_guidance_sweep=[]",
                                 "train.eval.oracle_seen_phrasing=false", "train.eval.oracle_unseen_vocabulary=false"]).train.eval
    result = oracle.evaluate_oracle(str(tiny_editor_dir), cfg, tmp_path, base_model=None)
    # The headline setting is edited once and reused; each other scale is one more editor pass.
    assert scales_of(editor_passes) == [(7.5, 1.5), (7.5, 3.0)]
    sweep = result["image_guidance_sweep"]
    assert [(p["text_guidance_scale"], p["image_guidance_scale"]) for p in sweep] == [(7.5, 1.5), (7.5, 3.0)]
    assert {k: sweep[0][k] for k in ("edit_accuracy", "preservation", "edit_correct")} == \
        {k: result[k] for k in ("edit_accuracy", "preservation", "edit_correct")}
    assert all(0.0 <= p[k] <= 1.0 for p in sweep for k in ("edit_accuracy", "preservation", "edit_correct"))

    # A text-scale sweep multiplies it: every image scale at every text scale.
    editor_passes.clear()
    cfg = cfg.model_copy(update={"oracle_text_guidance_sweep": [7.5, 4.0]})
    result = oracle.evaluate_oracle(str(tiny_editor_dir), cfg, tmp_path, base_model=None)
    scales = scales_of(editor_passes)
    assert scales == [(7.5, 1.5), (7.5, 3.0), (4.0, 1.5), (4.0, 3.0)]
    assert [(p["text_guidance_scale"], p["image_guidance_scale"]) for p in result["image_guidance_sweep"]] == scales


def test_oracle_eval_samples_editor_and_sdedit_with_the_configured_scheduler(tmp_path, tiny_editor_dir, tiny_sd_dir,
                                                                            monkeypatch):
    from datagen.config import load_config
    from model.editor import sampling

    made = []                       # (who, scheduler name) of every sampler built
    real_make = sampling.make_scheduler

    def recording(who):
        def make(name, config):
            made.append((who, name))
            return real_make(name, config)
        return make

    monkeypatch.setattr(sampling, "make_scheduler", recording("editor"))
    monkeypatch.setattr(sdedit, "make_scheduler", recording("sdedit"))
    cfg = load_config("shapes", ["train.eval.oracle_num_scenes=2", "train.eval.steps=2",
                                 "train.eval.oracle_image_guidance_sweep=[]", "train.eval.oracle_seen_phrasing=false", "train.eval.oracle_unseen_vocabulary=false",
                                 "train.eval.scheduler=DDIMScheduler"]).train.eval
    result = oracle.evaluate_oracle(str(tiny_editor_dir), cfg, tmp_path, base_model=str(tiny_sd_dir))
    assert set(made) == {("editor", "DDIMScheduler"), ("sdedit", "DDIMScheduler")}
    assert result["scheduler"] == "DDIMScheduler"
    default = oracle.evaluate_oracle(str(tiny_editor_dir), cfg.model_copy(update={"scheduler": sampling.DEFAULT_SCHEDULER}),
                                tmp_path / "default", base_model=None)
    assert default["scheduler"] == "EulerAncestralDiscreteScheduler"
    assert ("editor", "EulerAncestralDiscreteScheduler") in made
    with pytest.raises(ValueError, match="unknown scheduler 'NoSuchScheduler'"):
        oracle.evaluate_oracle(str(tiny_editor_dir), cfg.model_copy(update={"scheduler": "NoSuchScheduler"}),
                          tmp_path / "bad", base_model=None)


def test_eval_compare_puts_oracle_evals_side_by_side(tmp_path, tiny_editor_dir, tiny_sd_dir, capsys):
    from datagen.config import load_config

    common = ["train.eval.oracle_num_scenes=7", "train.eval.steps=2", "train.eval.oracle_text_guidance_sweep=[]"]
    swept = load_config("shapes", common + ["train.eval.oracle_image_guidance_sweep=[1.5,3.0]"]).train.eval
    a = oracle.evaluate_oracle(str(tiny_editor_dir), swept, tmp_path / "a", base_model=str(tiny_sd_dir))
    plain = load_config("shapes", common + ["train.eval.oracle_image_guidance_sweep=[]",
                                            "train.eval.oracle_seen_phrasing=false", "train.eval.oracle_unseen_vocabulary=false"]).train.eval
    b = oracle.evaluate_oracle(str(tiny_editor_dir), plain, tmp_path / "b", base_model=None)

    table = results.compare_oracle([a, b])
    rows = dict(table["rows"])
    triple = lambda d, p="": tuple(d[p + k] for k in ("edit_accuracy", "preservation", "edit_correct"))  # noqa: E731
    assert list(rows) == ["s_T 7.5 / s_I 1.5", "s_T 7.5 / s_I 3", "worded as in training (headline setting)",
                          f"SDEdit (strength {swept.oracle_sdedit_strength})"]
    assert rows["s_T 7.5 / s_I 1.5"] == [triple(a), triple(b)]
    assert rows["s_T 7.5 / s_I 3"] == [triple(a["image_guidance_sweep"][1]), None]   # b did not judge it
    assert rows[f"SDEdit (strength {swept.oracle_sdedit_strength})"] == [triple(a, "sdedit_"), None]
    assert table["mean_both"] == [pytest.approx((a["image_guidance_sweep"][0]["edit_correct"]
                                                 + a["image_guidance_sweep"][1]["edit_correct"]) / 2), None]
    assert table["standard_error"] == pytest.approx(0.5 / 7 ** 0.5)

    # The command: folders in, one Markdown table out; a folder without an eval is a clear error.
    assert editsynth_cli.main(["eval-compare", str(tmp_path / "a"), str(tmp_path / "b" / results.ORACLE_FILE)]) == 0
    out = capsys.readouterr().out
    cells = " / ".join(f"{x:.3f}" for x in triple(a["image_guidance_sweep"][1]))
    assert f"| s_T 7.5 / s_I 3 | {cells} | - |" in out
    assert editsynth_cli.main(["eval-compare", str(tmp_path / "a"), str(tmp_path)]) == 2
    assert "no oracle eval at" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"steps": 2}))
    assert editsynth_cli.main(["eval-compare", str(tmp_path / "other.json")]) == 2
    assert "is not the JSON of an `editsynth eval --oracle`" in capsys.readouterr().err


def test_eval_compare_pairs_the_same_scenes_verdict_by_verdict(tmp_path, tiny_editor_dir, capsys):
    from datagen.config import load_config

    cfg = load_config("shapes", ["train.eval.oracle_num_scenes=9", "train.eval.steps=2",
                                 "train.eval.oracle_text_guidance_sweep=[]",
                                 "train.eval.oracle_image_guidance_sweep=[1.5,3.0]"]).train.eval
    a = oracle.evaluate_oracle(str(tiny_editor_dir), cfg, tmp_path / "a", base_model=None)
    # Each scene's verdicts are kept, and they are what the rates count.
    for point, verdicts in [(a, a["by_scene"]["editor"])] + [(p, p["by_scene"]["editor"])
                                                             for p in a["image_guidance_sweep"]]:
        assert len(verdicts["edit"]) == len(verdicts["kept"]) == 9
        assert verdicts["edit"].count("1") / 9 == pytest.approx(point["edit_accuracy"])
        assert verdicts["kept"].count("1") / 9 == pytest.approx(point["preservation"])
        both = sum(e == k == "1" for e, k in zip(verdicts["edit"], verdicts["kept"]))
        assert both / 9 == pytest.approx(point["edit_correct"])
        assert verdicts["kept_full"].count("1") / 9 == pytest.approx(point["preservation_full"])
    assert a["by_scene"]["identity"] == {"edit": "0" * 9, "kept": "1" * 9, "kept_full": "1" * 9}

    # A second editor that gains four scenes at the headline ("both") and loses none.
    b = json.loads(json.dumps(a))
    start = {"edit": "000011111", "kept": "111100000"}     # made on 5 scenes, kept on 4: both on none
    gained = {"edit": "111111111", "kept": "111100000"}    # both on the first 4
    a["by_scene"]["editor"], b["by_scene"]["editor"] = start, gained
    table = results.compare_oracle([a, b, {**b, "seed": 1}])
    paired = dict(table["paired"])
    assert paired["s_T 7.5 / s_I 1.5"][0] is None                       # the first is the reference
    headline = paired["s_T 7.5 / s_I 1.5"][1]
    assert headline["edit"] == {"gained": 4, "lost": 0, "p": pytest.approx(2 / 16)}
    assert headline["kept"] == {"gained": 0, "lost": 0, "p": 1.0}
    assert headline["both"] == {"gained": 4, "lost": 0, "p": pytest.approx(2 / 16)}
    assert paired["s_T 7.5 / s_I 1.5"][2] is None                       # other scenes: no pairing
    assert paired["s_T 7.5 / s_I 3"][1]["both"] == {"gained": 0, "lost": 0, "p": 1.0}   # same verdicts
    assert results.sign_test(7, 2) == pytest.approx(2 * (1 + 9 + 36) / 512)
    assert results.sign_test(2, 7) == results.sign_test(7, 2)

    # The command prints it under the side-by-side table; evals made before verdicts were kept
    # (no by_scene) still compare, without it.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / results.ORACLE_FILE).write_text(json.dumps(b))
    (tmp_path / "a" / results.ORACLE_FILE).write_text(json.dumps(a))
    assert editsynth_cli.main(["eval-compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "| s_T 7.5 / s_I 1.5 | +4 / -0 (0.12) · +0 / -0 (1) · +4 / -0 (0.12) |" in out
    old = {k: v for k, v in a.items() if k != "by_scene"}
    old["image_guidance_sweep"] = [{k: v for k, v in p.items() if k != "by_scene"} for p in a["image_guidance_sweep"]]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert editsynth_cli.main(["eval-compare", str(tmp_path / "old.json"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "| s_T 7.5 / s_I 1.5 |" in out and "Scene by scene" not in out


def test_oracle_eval_judges_the_same_edits_worded_as_in_training(tmp_path, tiny_editor_dir, editor_passes):
    import re

    from datagen.config import load_config
    from datagen.shapes import grammar

    def phrased_by(instruction: str, kind: str, held_out: bool) -> bool:
        patterns = [re.sub(r"\\{\w+\\}", ".+", re.escape(t)) for key in grammar._TEMPLATES
                    if key.startswith(kind) for t in grammar.templates(key, held_out)]
        return any(re.fullmatch(p, instruction) for p in patterns)

    cfg = load_config("shapes", ["train.eval.oracle_num_scenes=7", "train.eval.steps=2",
                                 "train.eval.oracle_image_guidance_sweep=[]"]).train.eval
    result = oracle.evaluate_oracle(str(tiny_editor_dir), cfg, tmp_path, base_model=None)
    (held, *headline), (seen, *again), (unseen_instructions, *apart) = editor_passes
    # The tiny editor has no edit_config.json: the paper's scales, said so.
    assert headline == again == [7.5, 1.5] == [result["text_guidance_scale"], result["image_guidance_scale"]]
    assert result["guidance_from"] == "paper"
    # One edit per scene each time, the same edits: only the wording differs.
    kinds = [t.edit_kind for t in oracle.heldout_triples(7, cfg.seed)]
    assert all(phrased_by(i, k, held_out=True) and not phrased_by(i, k, held_out=False) for i, k in zip(held, kinds))
    assert all(phrased_by(i, k, held_out=False) and not phrased_by(i, k, held_out=True) for i, k in zip(seen, kinds))
    assert seen == oracle.seen_phrasings(oracle.heldout_triples(7, cfg.seed), cfg.seed)
    for key in ("seen_phrasing_edit_accuracy", "seen_phrasing_preservation", "seen_phrasing_edit_correct",
                "seen_phrasing_preservation_full", "seen_phrasing_edit_correct_full"):
        assert 0.0 <= result[key] <= 1.0
    assert all("seen_phrasing_edit_accuracy" in v for v in result["by_edit_kind"].values())
    # Apart: the scenes whose edit has a wording with a word no training text has, so worded.
    unseen = oracle.unseen_vocabulary_phrasings(oracle.heldout_triples(7, cfg.seed), cfg.seed)
    assert result["unseen_vocabulary_num_scenes"] == len(unseen) >= 4
    assert result["by_scene"]["unseen_vocabulary"]["scenes"] == sorted(unseen)
    assert apart == headline and [unseen[i] for i in sorted(unseen)] == unseen_instructions
    for key in ("unseen_vocabulary_edit_accuracy", "unseen_vocabulary_preservation", "unseen_vocabulary_edit_correct",
                "unseen_vocabulary_edit_correct_full", "unseen_vocabulary_preservation_full"):
        assert 0.0 <= result[key] <= 1.0


def test_heldout_triples_are_balanced_and_never_from_training_seeds():
    from datagen.shapes import grammar

    triples = oracle.heldout_triples(14, seed=0)
    kinds = [t.edit_kind for t in triples]
    assert all(kinds.count(k) == 2 for k in grammar.EDIT_KINDS)
    assert [t.instruction for t in oracle.heldout_triples(14, seed=0)] == [t.instruction for t in triples]


def test_validation_scenes_are_others_than_the_test_scenes():
    test, validation = oracle.heldout_triples(70, seed=0), oracle.heldout_triples(70, seed=0, scenes="validation")
    assert [t.edit_kind for t in test] == [t.edit_kind for t in validation]     # balanced alike
    pairs = lambda ts: {(t.input_caption, t.instruction) for t in ts}  # noqa: E731
    assert len(pairs(test) & pairs(validation)) < 5      # a chance repeat of a small scene at most
    with pytest.raises(ValueError, match="unknown held-out scenes 'train'"):
        oracle.heldout_triples(1, scenes="train")


def test_oracle_eval_on_validation_scenes_with_an_sdedit_strength_sweep(tmp_path, tiny_editor_dir, tiny_sd_dir):
    from datagen.config import load_config

    cfg = load_config("shapes", ["train.eval.oracle_num_scenes=3", "train.eval.steps=2",
                                 "train.eval.oracle_scenes=validation", "train.eval.oracle_seen_phrasing=false", "train.eval.oracle_unseen_vocabulary=false",
                                 "train.eval.oracle_image_guidance_sweep=[1.5,3]",
                                 "train.eval.oracle_text_guidance_sweep=[]",
                                 "train.eval.oracle_sdedit_strength=0.6",
                                 "train.eval.oracle_sdedit_strength_sweep=[0.5,0.6]"]).train.eval
    result = oracle.evaluate_oracle(str(tiny_editor_dir), cfg, tmp_path, base_model=str(tiny_sd_dir))
    assert result["scenes"] == "validation"
    # The headline strength once, then each other: the headline's row is the sdedit_* keys.
    sweep = result["sdedit_strength_sweep"]
    assert [p["sdedit_strength"] for p in sweep] == [0.6, 0.5]
    assert {k: sweep[0][k] for k in results.ORACLE_RATES} == {k: result["sdedit_" + k] for k in results.ORACLE_RATES}
    chosen = results.choose_guidance([result])
    assert (chosen["text_guidance"], chosen["image_guidance"]) in {(7.5, 1.5), (7.5, 3.0)}
    assert chosen["sdedit_strength"] in {0.5, 0.6}
    # Validation and test evals of the same editor are not the same scenes: no scene-by-scene pairing.
    test = oracle.evaluate_oracle(str(tiny_editor_dir), cfg.model_copy(update={"oracle_scenes": "test"}),
                             tmp_path / "test", base_model=None)
    assert all(p[1] is None for _, p in results.compare_oracle([test, result])["paired"])


def test_oracle_eval_of_a_missing_shipped_editor_says_how_to_get_one(tmp_path, monkeypatch):
    from datagen.config import load_config
    from datagen.shapes import models
    from model.editor.loading import EditorLoadError

    monkeypatch.setattr(models, "SHIPPED_EDITOR", tmp_path / "nowhere")
    cfg = load_config("shapes", ["train.eval.oracle_num_scenes=1"]).train.eval
    with pytest.raises(EditorLoadError, match="shipped shapes editor"):
        oracle.evaluate_oracle("shapes", cfg, tmp_path / "out", base_model=None)


def test_oracle_eval_on_a_datasets_own_pairs_judges_editor_and_data(tmp_path, tiny_editor_dir, capsys):
    # Exact renders as the "dataset": the oracle must find every one of its pairs right, and the
    # editor's edits of the same inputs are judged beside them, per edit kind, for the split asked.
    pairs = shapes_pairs(6, seed=3, size=64)
    write_shards(tmp_path / "data", pairs, num_shards=2, split="train")
    out = tmp_path / "fit"
    rc = editsynth_cli.main(["eval", "--oracle", "--editor", str(tiny_editor_dir), "--data", str(tmp_path / "data"),
                             "--split", "train", "--out", str(out), "--set", "train.eval.oracle_num_scenes=50",
                             "--set", "train.eval.steps=2", "--set", "train.eval.oracle_image_guidance_sweep=[1.5,4]",
                             "--set", "train.eval.oracle_text_guidance_sweep=[]"])
    assert rc == 0
    saved = json.loads((out / results.PAIRS_ORACLE_FILE).read_text())
    assert saved["split"] == "train" and saved["num_scenes"] == 6   # all pairs, though 50 were allowed
    assert saved["dataset_edit_accuracy"] == 1.0 and saved["dataset_preservation"] == 1.0
    assert 0.0 <= saved["edit_accuracy"] <= 1.0 and 0.0 <= saved["preservation"] <= 1.0
    assert sorted(saved["by_edit_kind"]) == sorted({meta["edit_kind"] for *_, meta in pairs})
    assert [p["image_guidance_scale"] for p in saved["image_guidance_sweep"]] == [1.5, 4.0]
    assert not (out / results.ORACLE_FILE).exists()
    # eval-compare reads such a folder too, with the pairs' own images as one more row.
    assert editsynth_cli.main(["eval-compare", str(out)]) == 0
    assert "| the pairs' own edited images | 1.000 / 1.000 / 1.000 |" in capsys.readouterr().out


def test_oracle_eval_on_pairs_without_captions_names_the_problem(tmp_path, tiny_editor_dir):
    from datagen.config import load_config

    pairs = [(k, a, b, {"instruction": m["instruction"]}) for k, a, b, m in shapes_pairs(2, seed=4, size=64)]
    write_shards(tmp_path / "data", pairs, split="test")
    cfg = load_config("shapes", ["train.eval.steps=2"]).train.eval
    with pytest.raises(ValueError, match="input_caption and output_caption.*2 pairs"):
        oracle.evaluate_oracle_pairs(str(tiny_editor_dir), str(tmp_path / "data"), "test", cfg, tmp_path / "out")


def test_oracle_summary_counts_unnamed_facts_apart_for_every_method():
    from datagen.shapes.oracle import PairJudgement

    def judged(edit, kept, kept_full):   # (input_ok, output_ok, edit_ok, preserved, correct, preserved_full, ...)
        return PairJudgement(True, edit, edit, kept, edit, kept_full, edit and kept_full)

    scenes = [judged(True, True, True), judged(True, True, False), judged(False, True, False), judged(True, False, False)]
    summary = oracle.oracle_summary(["recolour", "recolour", "move", "move"],
                                    {m: scenes for m in ("editor", "sdedit", "identity", "seen_phrasing")})
    for p in ("", "sdedit_", "identity_", "seen_phrasing_"):
        assert summary[p + "edit_correct"] == 0.5 and summary[p + "preservation"] == 0.75
        assert summary[p + "edit_correct_full"] == 0.25 and summary[p + "preservation_full"] == 0.25
    assert summary["by_edit_kind"]["recolour"]["sdedit_preservation_full"] == 0.5
    assert summary["by_scene"]["editor"] == {"edit": "1101", "kept": "1110", "kept_full": "1000"}

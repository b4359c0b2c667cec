"""``editsynth eval``, ``eval-compare`` and ``edit-config``: measure editors, choose their guidance."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from datagen.shapes.models import resolve_model
from model.training.cli import pipeline_config, reported

from .results import (ORACLE_FILE, PAIRS_ORACLE_FILE, NotAnOracleEval, NotForChoosing, choose_guidance,
                      compare_oracle)


def run_eval(args) -> int:
    # torch and the models load only when an eval runs, not for every `editsynth` command.
    from . import clip_sweep, oracle
    from .sdedit import base_model_of

    cfg = pipeline_config(args)
    ecfg = cfg.train.eval
    if args.split:
        ecfg.split = args.split
    if args.oracle and cfg.train.data:  # the dataset's own pairs: train vs held-out split = overfitting
        result = oracle.evaluate_oracle_pairs(args.editor, cfg.train.data, ecfg.split, ecfg, args.out,
                                                device=args.device)
        keys = ("split", "num_scenes", "edit_accuracy", "preservation", "edit_correct",
                "dataset_edit_accuracy", "dataset_preservation")
        print(json.dumps({k: result[k] for k in keys}))
        return 0
    base = args.base_model or base_model_of(args.editor, cfg.train.base_model)
    if args.oracle:
        result = oracle.evaluate_oracle(args.editor, ecfg, args.out, None if args.no_sdedit else base,
                                          device=args.device)
        keys = ("edit_accuracy", "preservation", "sdedit_edit_accuracy", "sdedit_preservation",
                "identity_edit_accuracy", "identity_preservation", "seen_phrasing_edit_accuracy",
                "seen_phrasing_preservation")
        print(json.dumps({k: result[k] for k in keys if k in result}))
        return 0
    if not cfg.train.data:
        raise SystemExit("editsynth eval: give the held-out data with --data DIR_OR_HF (or use --oracle)")
    if args.no_sdedit:
        ecfg.sdedit_strengths = []
    result = clip_sweep.evaluate_sweep(args.editor, cfg.train.data, ecfg, args.out, base, device=args.device)
    print(json.dumps({"editor_sweep": result["editor_sweep"], "sdedit": result["sdedit"]}))
    return 0


def oracle_eval_file(given: str) -> Path:
    """An eval folder's oracle_edit.json (or oracle_pairs.json), or the file given."""
    path = Path(given)
    if not path.is_dir():
        return path
    return next((f for f in (path / ORACLE_FILE, path / PAIRS_ORACLE_FILE) if f.is_file()), path / ORACLE_FILE)


def run_edit_config(args) -> int:
    """Write the guidance an editor edits best at, chosen on validation scenes, into its directory."""
    from model.editor.loading import EDIT_CONFIG_FILE

    paths = [oracle_eval_file(p) for p in args.sources]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no oracle eval at {', '.join(missing)} (made by `editsynth eval --oracle --out DIR`)")
    results = [json.loads(p.read_text()) for p in paths]
    directory = Path(resolve_model(args.editor, "editor"))
    if not (directory / "model_index.json").is_file():
        raise FileNotFoundError(f"{directory} is not a local editor directory (no model_index.json)")
    try:
        chosen = choose_guidance(results)
    except NotForChoosing as e:
        print(f"editsynth edit-config: {', '.join(map(str, paths))}: {e}", file=sys.stderr)
        return 2
    evaluated = chosen["judged"]["editor"]
    if evaluated and Path(resolve_model(evaluated, "editor")).resolve() != directory.resolve():
        print(f"editsynth edit-config: note: the evals judged {evaluated!r}, not {args.editor!r}", file=sys.stderr)
    config = {"text_guidance": chosen["text_guidance"], "image_guidance": chosen["image_guidance"],
              "chosen_by": "the most edits made with everything else kept (the oracle's edit_correct) over "
                           "the guidance sweeps of oracle evals on validation scenes",
              "chosen_on": {"evals": [str(p) for p in paths], **chosen["judged"], **chosen["validation"]}}
    (directory / EDIT_CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
    v = chosen["validation"]
    print(f"wrote {directory / EDIT_CONFIG_FILE}: s_T {config['text_guidance']:g} / s_I {config['image_guidance']:g} "
          f"(validation: edit {v['edit_accuracy']:.3f}, kept {v['preservation']:.3f}, both {v['edit_correct']:.3f})")
    if "sdedit_strength" in chosen:
        sd = chosen["sdedit_validation"]
        print(f"SDEdit's best strength on these scenes: {chosen['sdedit_strength']:g} (edit {sd['edit_accuracy']:.3f}, "
              f"kept {sd['preservation']:.3f}, both {sd['edit_correct']:.3f}); set train.eval.oracle_sdedit_strength")
    return 0


def run_eval_compare(args) -> int:
    paths = [oracle_eval_file(p) for p in args.evals]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no oracle eval at {', '.join(missing)} (made by `editsynth eval --oracle --out DIR`)")
    def not_an_eval(path: Path, why: Exception) -> int:
        print(f"editsynth eval-compare: {path} is not the JSON of an `editsynth eval --oracle` "
              f"({type(why).__name__}: {why})", file=sys.stderr)
        return 2

    results = []
    for path in paths:
        try:
            results.append(json.loads(path.read_text()))
        except ValueError as e:
            return not_an_eval(path, e)
    try:
        table = compare_oracle(results)
    except NotAnOracleEval as e:
        return not_an_eval(paths[e.index], e.why)
    if args.json:
        print(json.dumps(table))
        return 0
    cell = lambda t: "-" if t is None else " / ".join(f"{x:.3f}" for x in t)  # noqa: E731
    print("| edit / kept / both | " + " | ".join(args.evals) + " |")
    print("|---" * (len(args.evals) + 1) + "|")
    for label, triples in table["rows"]:
        print(f"| {label} | " + " | ".join(cell(t) for t in triples) + " |")
    if any(m is not None for m in table["mean_both"]):
        print("| mean of 'both' over the sweep | "
              + " | ".join("-" if m is None else f"{m:.3f}" for m in table["mean_both"]) + " |")
    print(f"\nOne standard error of a rate: up to {table['standard_error']:.3f}.")
    if any(change for _, row in table["paired"] for change in row):
        # The same scenes, seeds and instructions: the noise two editors share cancels scene by scene.
        print(f"\nScene by scene against {args.evals[0]} (the same scenes): how many each later one gained "
              "and lost, and the exact sign test's p.\n")
        print("| edit · kept · both: +gained / -lost (p) | " + " | ".join(args.evals[1:]) + " |")
        print("|---" * len(args.evals) + "|")
        shown = lambda c: "-" if c is None else " · ".join(  # noqa: E731
            f"+{c[k]['gained']} / -{c[k]['lost']} ({c[k]['p']:.2g})" for k in ("edit", "kept", "both"))
        for label, row in table["paired"]:
            if any(row):
                print(f"| {label} | " + " | ".join(shown(c) for c in row[1:]) + " |")
    return 0


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluate an editor: CLIP guidance sweep vs SDEdit, or the shapes oracle",
                       description="Sweep image guidance on a held-out split (CLIP directional vs image "
                                   "similarity, SDEdit baseline), or with --oracle edit held-out rendered "
                                   "shapes-world scenes and judge them exactly.")
    e.add_argument("--editor", default="shapes", help="editor: diffusers dir, hub id, or 'shapes' (shipped)")
    e.add_argument("--out", required=True, help="folder for eval.json + eval_plot.png, or oracle_edit.json")
    e.add_argument("--pipeline", default="shapes", help="named pipeline whose train.eval settings apply")
    e.add_argument("--pipelines-file", default=None)
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="e.g. --set train.eval.num_examples=50")
    e.add_argument("--data", help="held-out data: webdataset export dir or Hugging Face dataset")
    e.add_argument("--split", default=None, help="held-out split (default train.eval.split)")
    e.add_argument("--base-model", default=None,
                   help="SDEdit's model (default: the editor's base from editsynth_train.json)")
    e.add_argument("--no-sdedit", action="store_true", help="skip the SDEdit baseline")
    e.add_argument("--oracle", action="store_true",
                   help="judge edits of rendered shapes-world scenes exactly (oracle_edit.json); with --data, "
                        "judge edits of that shapes dataset's own pairs of --split instead (oracle_pairs.json)")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=reported("eval", run_eval))

    c = sub.add_parser("eval-compare", help="oracle evals of several editors side by side (edit / kept / both)",
                       description="Print the oracle figures of several `editsynth eval --oracle` runs as one "
                                   "Markdown table: every guidance setting, worded as in training, SDEdit.")
    c.add_argument("evals", nargs="+", help="eval folders (or their oracle_edit.json / oracle_pairs.json)")
    c.add_argument("--json", action="store_true", help="print the table as JSON")
    c.set_defaults(func=reported("eval-compare", run_eval_compare))

    g = sub.add_parser("edit-config", help="write the guidance an editor edits best at into its edit_config.json",
                       description="Choose, from an oracle eval's guidance sweep on VALIDATION scenes, the (s_T, "
                                   "s_I) that makes the most edits while keeping everything else, and write it "
                                   "to EDITOR/edit_config.json: `edit`, `serve` and `eval` then use it unless "
                                   "told otherwise. Refuses evals of the test scenes.")
    g.add_argument("editor", help="a local editor directory, or 'shapes' (the shipped one)")
    g.add_argument("--from", dest="sources", required=True, action="append", metavar="EVAL",
                   help="the eval folder (or its oracle_edit.json) of `editsynth eval --oracle --set "
                        "train.eval.oracle_scenes=validation` with a guidance sweep; repeat to pool the "
                        "sweeps of several evals of the same scenes")
    g.set_defaults(func=reported("edit-config", run_edit_config))

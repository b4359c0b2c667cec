"""``editsynth render-one``: re-render one candidate of a run, bit-for-bit, and check it against the shard."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "render-one", help="re-render one candidate of a run from its saved config and ids",
        description="Re-render one Stage-2 candidate from RUN/config.json and its id; on the same device and "
                    "settings the images equal the run's shard byte for byte (checked when the shard exists).")
    p.add_argument("--run", required=True, help="run folder (holds config.json and captions/)")
    p.add_argument("--candidate", required=True, help="candidate id, <triple_id>_<index>")
    p.add_argument("--out", default=None,
                   help="output prefix: writes OUT.input.<ext>, OUT.edited.<ext> and OUT.json (default: ./<candidate>)")
    p.set_defaults(func=render_one_command)

    p = subparsers.add_parser(
        "preview-rule", help="calibrate the preview stop rule (render.preview.rule) on a stored run",
        description="From a run rendered with render.preview and no rule (every candidate previewed and finished), "
                    "fit the rule that stops candidates whose preview predicts failure, keeping --target-recall of "
                    "the candidates that pass the filter. Writes the rule's JSON and prints preview vs final scores.")
    p.add_argument("--run", required=True, help="the calibration run folder")
    p.add_argument("--target-recall", type=float, default=0.95, help="share of would-be-kept candidates to let through")
    p.add_argument("--kind", choices=("logistic", "threshold"), default="logistic")
    p.add_argument("--out", default=None, help="rule JSON (default: RUN/report/preview_rule.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's config first, e.g. the filter thresholds the label uses")
    p.set_defaults(func=preview_rule_command)


def preview_rule_command(args: argparse.Namespace) -> int:
    from datagen.preview_calibration import calibrate, preview_report
    from datagen.preview_rule import save_rule
    from datagen.store import RunStore

    rule = calibrate(args.run, args.target_recall, args.kind, args.set)
    path = (save_rule(rule, args.out) if args.out
            else RunStore(args.run).write_text("report/preview_rule.json", rule.to_json()))
    report = preview_report(args.run)
    print(json.dumps({"rule": str(path), "calibration": rule.calibration,
                      "preview_vs_final": report}, indent=1))
    print(f"use it with: --set render.preview.rule={path}")
    return 0


def render_one_command(args: argparse.Namespace) -> int:
    from datagen.store import RunStore

    from datagen.config import load_run_config
    from datagen.run import preview_scorer

    from .stage import STAGE, image_stage, render_one

    cfg = load_run_config(args.run)
    shard, rendered = render_one(args.run, args.candidate,
                                 preview_scorer=preview_scorer(cfg, args.run) if cfg.render.preview else None)
    cand = rendered.candidate
    prefix = Path(args.out or cand.candidate_id)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps(cand.to_row(), indent=1, sort_keys=True))
    for name, data in {**rendered.images, **rendered.preview_images}.items():
        Path(f"{prefix}.{name}").write_bytes(data)
    if cand.status != "ok":
        print(f"{cand.candidate_id}: failed: {cand.failure_reason}")
    else:
        print(f"{cand.candidate_id}: wrote {', '.join(f'{prefix}.{n}' for n in rendered.images)}")
    store = RunStore(args.run)
    if not store.is_done(STAGE, shard):
        print(f"shard {STAGE}-{shard:05d} not rendered yet: nothing to compare")
        return 0 if cand.status == "ok" else 1
    # render.store=kept writes no render tar: the images stored are the filter shard's (keep bound only)
    stage = image_stage(store, shard)
    stored = store.read_tar(stage, shard).get(cand.candidate_id, {}) if store.is_done(stage, shard) else {}
    if stage == "filter" and not stored and cand.status == "ok":
        print(f"{cand.candidate_id} was not stored (outside the filter's keep bound, render.store=kept): "
              "nothing to compare")
        return 0
    same = all(stored.get(n) == data for n, data in rendered.images.items()) and (
        bool(stored) == bool(rendered.images))
    print(f"{'identical to' if same else 'DIFFERENT from'} {store.url(store.shard_name(stage, shard, 'tar'))}")
    return 0 if same else 1

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


def render_one_command(args: argparse.Namespace) -> int:
    from datagen.store import RunStore

    from .stage import STAGE, render_one

    shard, rendered = render_one(args.run, args.candidate)
    cand = rendered.candidate
    prefix = Path(args.out or cand.candidate_id)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.json").write_text(json.dumps(cand.to_row(), indent=1, sort_keys=True))
    for name, data in rendered.images.items():
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
    stage = STAGE if store.shard_path(STAGE, shard, "tar").exists() else "filter"
    stored = store.read_tar(stage, shard).get(cand.candidate_id, {}) if store.is_done(stage, shard) else {}
    if stage == "filter" and not stored and cand.status == "ok":
        print(f"{cand.candidate_id} was not stored (outside the filter's keep bound, render.store=kept): "
              "nothing to compare")
        return 0
    same = all(stored.get(n) == data for n, data in rendered.images.items()) and (
        bool(stored) == bool(rendered.images))
    print(f"{'identical to' if same else 'DIFFERENT from'} {store.shard_path(stage, shard, 'tar')}")
    return 0 if same else 1

"""``editsynth generate`` (= ``python run_generation.py``): run stages 1-3 of a pipeline."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import ConfigError, load_config
from .distribute import StageFailed
from .run import STAGE_ORDER, parse_stages, run_pipeline

log = logging.getLogger("editsynth.generate")


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default="shapes",
                   help="named pipeline of pipelines.yaml (shapes: offline default; paper; smoke)")
    p.add_argument("--stages", default=",".join(STAGE_ORDER),
                   help=f"comma-separated stages to run, in order (default: {','.join(STAGE_ORDER)})")
    p.add_argument("--out", default=None, help="run folder (default: runs/<pipeline>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set captions.num_triples=1000 (repeatable)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (e.g. 127.0.0.1:6379); default: a local Ray")
    p.add_argument("--overwrite", action="store_true",
                   help="start the named stages over instead of resuming (resume is the default)")
    p.add_argument("--config", default=None, help="pipelines file (default: the packaged pipelines.yaml)")


def generate(args: argparse.Namespace) -> int:
    try:
        overrides = list(args.overrides)
        if args.ray_address:
            overrides.append(f"ray_address={args.ray_address}")
        cfg = load_config(args.pipeline, overrides, args.config)
        stages = parse_stages(args.stages)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or f"runs/{args.pipeline}"
    log.info("pipeline %s -> %s, stages %s", args.pipeline, out, ",".join(stages))
    try:
        summary = run_pipeline(cfg, out, stages, overwrite=args.overwrite)
    except (ConfigError, FileNotFoundError) as e:   # found by a stage at start: a missing key, model...
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:   # a shard failed, or a stage kept nothing: what is done stays done
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1, default=str))
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="run stages 1-3 (captions, render, filter) of a pipeline",
                       description="Make an editing dataset: LLM/grammar triples -> Prompt-to-Prompt "
                                   "candidate pairs -> CLIP filter. Resumes a killed run by default.")
    add_generate_arguments(p)
    p.set_defaults(func=generate)

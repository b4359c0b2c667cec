"""``editsynth train`` (also ``python train_editor.py``)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)


def pipeline_config(args):
    from datagen.config import load_config

    cfg = load_config(args.pipeline, list(args.set or []), args.pipelines_file)
    if getattr(args, "data", None):
        cfg.train.data = args.data
    return cfg


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input: reported in one line, not as a traceback."""
    from datagen.config import ConfigError
    from model.editor.loading import EditorLoadError
    from model.training.data import DataError

    return ConfigError, DataError, EditorLoadError, FileNotFoundError


def reported(command: str, fn):
    """``fn`` as a subcommand: bad input is one line on stderr and exit code 2."""
    def run(args) -> int:
        try:
            return fn(args)
        except _user_errors() as e:
            print(f"editsynth {command}: {e}", file=sys.stderr)
            return 2
    return run


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", default="shapes", help="named pipeline of pipelines.yaml (default: shapes)")
    p.add_argument("--pipelines-file", default=None, help="another pipelines.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=500 (repeatable)")
    p.add_argument("--data", help="webdataset export dir / tar pattern, or a Hugging Face dataset (= train.data)")
    p.add_argument("--out", required=True, help="output folder: the editor pipeline, checkpoints, logs")
    p.add_argument("--num-workers", type=int, default=None,
                   help="run on Ray Train with this many workers (one per GPU); default: one local process")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (implies Ray Train)")


def run_train(args) -> int:
    from model.training.loop import train

    cfg = pipeline_config(args)
    result = train(cfg.train, args.out, num_workers=args.num_workers, ray_address=args.ray_address or cfg.ray_address)
    print(json.dumps({"out": result.out_dir, "steps": result.steps, "final_loss": result.final_loss,
                      "seconds": round(result.seconds, 1), "resumed_from": result.resumed_from,
                      "world_size": result.world_size, "device": result.device}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train an InstructPix2Pix editor on exported pairs",
                       description="Train an InstructPix2Pix editor from a Stable Diffusion checkpoint "
                                   "(or retrain an editor). Re-run the same command to resume.")
    add_train_arguments(p)
    p.set_defaults(func=reported("train", run_train))

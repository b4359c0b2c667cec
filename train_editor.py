"""Train the InstructPix2Pix editor: ``python train_editor.py --pipeline NAME [--set train.x=y] [--data D] --out DIR``.

The same as ``editsynth train``; re-running the command resumes from the last checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import sys

from model.training.cli import add_train_arguments, reported, run_train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train_editor.py", description=__doc__.splitlines()[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    return reported("train", run_train)(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Run stages 1-3 of a named pipeline of pipelines.yaml (same as ``editsynth generate``).

    python run_generation.py --pipeline shapes --stages captions,render,filter --out runs/shapes
"""
import argparse
import logging
import sys

from datagen.cli import add_generate_arguments, generate
from editsynth_cli import quiet_http_loggers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    quiet_http_loggers()
    return generate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The ``editsynth`` console command: one entry point, one subcommand per workflow.

Each package registers its own subcommands (``register(subparsers)`` in its ``cli.py``), so the
command grows with the packages and no package reaches into another's code.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Packages that contribute subcommands, in the order --help lists them.
CLI_MODULES = (
    "datagen.cli",            # generate
    "datagen.status",         # status
    "datagen.plan",           # plan
    "datagen.captions.cli",   # captions export-finetune
    "datagen.p2p.cli",        # render-one
    "datagen.filter.cli",     # refilter, audit, label, export
    "shapes_lab.cli",     # shapes train-t2i / train-clip / ...
    "model.cli",              # train, eval, edit, serve
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every room's subcommands; with ``command``, of the rooms up to the one that
    registers it (the rooms after it may import torch: 800 MB and seconds a refilter never needs)."""
    parser = argparse.ArgumentParser(
        prog="editsynth",
        description="Make instruction-based image-editing datasets (InstructPix2Pix style) "
                    "and train and serve the editors learnt from them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CLI_MODULES:
        importlib.import_module(name).register(sub)
        if command is not None and command in sub.choices:
            break
    return parser


def quiet_http_loggers() -> None:
    """The openai client logs one INFO line per request: 450K lines on a paper run."""
    for name in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not a global flag)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_http_loggers()
    from datagen.distribute import quiet_ray_logging

    quiet_ray_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The editsynth entry point: Ray's own logging stays quiet unless -v; a filter command loads no torch."""
from __future__ import annotations

import logging
import subprocess
import sys

from editsynth_cli import build_parser, main


def test_ray_loggers_are_quiet_unless_verbose(tmp_path):
    from datagen import distribute

    try:
        main(["refilter", "--run", str(tmp_path)])          # fails (no scores) after logging is set up
        assert logging.getLogger("ray.data").level == logging.WARNING
        assert logging.getLogger("ray").level == logging.WARNING
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        main(["-v", "refilter", "--run", str(tmp_path)])
        assert logging.getLogger("ray.data").level == logging.NOTSET
        assert distribute._ray_verbose
    finally:
        distribute.quiet_ray_logging(False)


def test_help_lists_every_room_and_a_filter_command_imports_no_torch(tmp_path):
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"generate", "refilter", "audit", "export", "train", "plan"} <= names
    code = ("import sys, editsynth_cli; editsynth_cli.main(['refilter', '--run', sys.argv[1]]); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]

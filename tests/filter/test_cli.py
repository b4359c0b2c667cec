"""The editsynth subcommands of Stage 3, run in-process as a user would type them."""
from __future__ import annotations

import json

from editsynth_cli import main


def test_audit_and_export_commands(run_copy, tmp_path, capsys):
    store, _ = run_copy
    assert main(["audit", "--run", str(store.root), "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert f"report: {store.root / 'report' / 'audit.html'}" in out and "against oracle labels" in out
    assert main(["export", "--run", str(store.root), "--format", "hf", "--out", str(tmp_path / "x"),
                 "--set", "export.shard_size=100"]) == 0
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["formats"] == ["hf"] and not (tmp_path / "x" / "webdataset").exists()
    assert sum(len(v) for v in manifest["hf"]["files"].values()) == sum(1 for n in manifest["splits"].values() if n)


def test_commands_print_one_clear_error_for_bad_input(tmp_path, capsys):
    assert main(["audit", "--run", str(tmp_path)]) == 2
    assert "no done shards" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path)]) == 2
    assert "config.json not found" in capsys.readouterr().err

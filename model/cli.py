"""Subcommands of Stage 4: train (training), eval, eval-compare, edit-config (evaluation), edit and
serve (serving)."""
from __future__ import annotations

from model.evaluation import cli as evaluation_cli
from model.serving import cli as serving_cli
from model.training import cli as training_cli


def register(sub) -> None:
    for module in (training_cli, evaluation_cli, serving_cli):
        module.register(sub)

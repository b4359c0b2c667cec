"""Subcommands of Stage 4: train and eval (cli_train), edit and serve (cli_edit)."""
from __future__ import annotations

import importlib


def register(sub) -> None:
    for name in ("model.cli_train", "model.cli_edit"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register(sub)

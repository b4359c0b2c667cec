"""Human labels of candidates (good/bad pairs): the file the labelling page writes and the
audit reads.

Accepted files, all keyed by candidate id:
  - JSON object  {"<candidate_id>": "good" | "bad" | true | false | 1 | 0 | {"label": ...}}
  - JSON list    [{"candidate_id": ..., "label": ...}, ...]
  - CSV          with columns candidate_id,label
The labelling page writes the first form to ``<run>/labels/labels.json``.
"""
from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from datagen.store import RunStore, file_location

DEFAULT_LABELS = "labels/labels.json"   # in the run
_GOOD = {"good", "true", "1", "yes", "correct", "ok"}
_BAD = {"bad", "false", "0", "no", "wrong"}


class LabelError(ValueError):
    """A labels file that cannot be read; the message names the file and the entry."""


def parse_label(value: Any, where: str) -> bool:
    if isinstance(value, dict):
        value = value.get("label")
    text = str(value).strip().lower()
    if text in _GOOD:
        return True
    if text in _BAD:
        return False
    raise LabelError(f"{where}: label {value!r} is not one of good/bad, true/false, 1/0")


def load_labels(path: str | Path) -> pd.Series:
    """Boolean Series (True = good pair) indexed by candidate_id; ``path`` local or on an object store."""
    folder, name = file_location(path)
    if not folder.exists(name):
        raise LabelError(f"labels file {path} not found")
    labels: dict[str, bool] = {}
    if name.lower().endswith(".csv"):
        with folder.open(name, "r", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"candidate_id", "label"} <= set(reader.fieldnames):
                raise LabelError(f"{path}: a labels CSV needs the columns candidate_id,label; got {reader.fieldnames}")
            for i, row in enumerate(reader, start=2):
                labels[row["candidate_id"].strip()] = parse_label(row["label"], f"{path}:{i}")
    else:
        try:
            data = json.loads(folder.read_text(name))
        except ValueError as e:
            raise LabelError(f"{path}: not valid JSON: {e}") from None
        if isinstance(data, dict):
            labels = {str(k): parse_label(v, f"{path}[{k!r}]") for k, v in data.items()}
        elif isinstance(data, list):
            for i, item in enumerate(data):
                if not isinstance(item, dict) or "candidate_id" not in item:
                    raise LabelError(f"{path}[{i}]: expected an object with candidate_id and label")
                labels[str(item["candidate_id"])] = parse_label(item.get("label"), f"{path}[{i}]")
        else:
            raise LabelError(f"{path}: expected a JSON object or list of labels")
    return pd.Series(labels, dtype=bool, name="label")


class LabelFile:
    """The labelling page's file: read once, updated atomically on every click."""

    def __init__(self, store: RunStore, path: str | Path | None = None):
        self.path = str(path) if path else store.url(DEFAULT_LABELS)
        self.folder, self.name = file_location(self.path)
        self.entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()   # the page's server answers clicks on several threads
        if self.folder.exists(self.name):
            data = json.loads(self.folder.read_text(self.name))
            self.entries = {k: (v if isinstance(v, dict) else {"label": v}) for k, v in data.items()}

    def set(self, candidate_id: str, label: str) -> None:
        if label not in ("good", "bad"):
            raise LabelError(f"label must be 'good' or 'bad', got {label!r}")
        with self._lock:
            self.entries[candidate_id] = {"label": label, "labelled_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            self.folder.write_json(self.name, self.entries)

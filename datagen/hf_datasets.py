"""Opening a Hugging Face dataset split, as Stage 1 (caption sources) and Stage 4 (edit pairs) do."""
from __future__ import annotations

from pathlib import Path


class DatasetOpenError(ValueError):
    """The dataset or its split cannot be opened; the message says why, ``about`` which: path or split."""

    def __init__(self, message: str, about: str = "path"):
        super().__init__(message)
        self.about = about


def open_hf_split(path: str, split: str):
    """One split of a dataset folder saved with ``save_to_disk`` (a DatasetDict or a single Dataset),
    or of anything ``datasets.load_dataset`` accepts (a hub id, a loading script, data files)."""
    import datasets

    folder = Path(path)
    try:
        if folder.is_dir() and ((folder / "dataset_dict.json").exists() or (folder / "state.json").exists()):
            ds = datasets.load_from_disk(str(folder))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DatasetOpenError(f"dataset {path!r} has splits {sorted(ds)}, not {split!r}", "split")
                ds = ds[split]
            return ds
        return datasets.load_dataset(path, split=split)
    except DatasetOpenError:
        raise
    except Exception as e:  # the datasets library raises many kinds (unknown split, not found, offline)
        raise DatasetOpenError(f"cannot load Hugging Face dataset {path!r} split {split!r}: "
                               f"{type(e).__name__}: {e}") from e

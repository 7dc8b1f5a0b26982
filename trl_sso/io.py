"""Loading a dataset from wherever a user points: a folder written by `trl-sso generate`, a saved dataset folder, a
local JSON/JSONL/CSV/Parquet file, or a dataset on the Hub (name and config)."""

from pathlib import Path


FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_any(source: str, config: str | None = None, split: str = "train"):
    """One split of the dataset at `source` (see the module docstring) as a `datasets.Dataset`."""
    import datasets

    path = Path(source)
    if path.is_dir() and (path / "dataset").is_dir():
        path = path / "dataset"  # the output folder of `trl-sso generate`
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"The dataset at {source!r} has no split {split!r} (it has {list(dataset)}).")
            dataset = dataset[split]
        return dataset
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"Cannot read {source!r}: use a .json, .jsonl, .csv or .parquet file, a saved dataset folder, or a "
                "dataset name."
            )
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.suffix.lower() in FILE_BUILDERS or path.is_absolute() or source.startswith("."):
        raise FileNotFoundError(f"{source!r} does not exist. Check the path.")
    from .hub import with_retries

    return with_retries(lambda: datasets.load_dataset(source, config, split=split), f"Loading dataset {source}")

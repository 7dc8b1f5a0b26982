"""Prompt sets for generation: the packaged default (200 prompts written by us across advice, writing, coding, math,
safety-sensitive and factual questions), a local file (JSON, JSONL, CSV, Parquet or a saved dataset folder), or any
`datasets` dataset name. Every prompt becomes a list of user (and earlier assistant) messages, without system ones."""

import json
from importlib.resources import files


def packaged_prompts(name: str = "default_prompts") -> list[dict]:
    """A packaged prompt set as `{"category", "prompt"}` records: `default_prompts` (200, for generation) or
    `eval_prompts` (40 held-out prompts for `trl-sso evaluate`, disjoint from the first)."""
    text = files("trl_sso").joinpath(f"resources/{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def default_prompts() -> list[dict]:
    """The packaged generation prompts, as `{"category", "prompt"}` records."""
    return packaged_prompts("default_prompts")


def _as_messages(value, index: int, column: str, source: str) -> list[dict] | None:
    if isinstance(value, str):
        return [{"role": "user", "content": value.strip()}] if value.strip() else None
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        messages = [m for m in value if m["role"] != "system"]
        return messages if any(m["role"] == "user" and str(m["content"]).strip() for m in messages) else None
    held = "null" if value is None else type(value).__name__
    raise ValueError(
        f"Row {index} of the prompt column {column!r} of {source!r} holds {held}; expected a string or a list of "
        "{'role', 'content'} messages. Fix or drop the row, or pick another column with `--prompt_column`."
    )


def load_prompts(
    source: str | None = None,
    column: str = "prompt",
    split: str = "train",
    num_prompts: int | None = None,
    packaged: str = "default_prompts",
) -> list[list[dict]]:
    """Load and normalise a prompt set (see the module docstring; without `source`, the `packaged` set); blank
    prompts are skipped."""
    if source is None:
        values = [record["prompt"] for record in packaged_prompts(packaged)]
        column = "prompt"
    else:
        from ..data import load_dataset_split

        dataset = load_dataset_split(source, split=split)
        if column not in dataset.column_names:
            raise ValueError(
                f"The prompt set {source!r} has no column {column!r} (it has {dataset.column_names}). Choose one with "
                "`--prompt_column`."
            )
        values = dataset[column]
    where = source or packaged
    prompts = [m for i, v in enumerate(values) if (m := _as_messages(v, i, column, where)) is not None]
    if num_prompts is not None:
        prompts = prompts[:num_prompts]
    if not prompts:
        raise ValueError(
            f"The prompt set {source or 'default'!r} (column {column!r}) holds no non-empty prompt. Check the file "
            "and `--prompt_column`, or raise `--num_prompts`."
        )
    return prompts

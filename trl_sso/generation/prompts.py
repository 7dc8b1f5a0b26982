"""Prompt sets for generation: the packaged default (200 prompts written by us across advice, writing, coding, math,
safety-sensitive and factual questions), a local file (JSON, JSONL, CSV, Parquet or a saved dataset folder), or any
`datasets` dataset name. Every prompt becomes a list of user (and earlier assistant) messages.

The one prompt rule of every command that reads prompts (`generate`, `online`, `calibrate`, `evaluate`), the same as
the trainer's for records (`trl_sso.data.validate_record`):
- an empty prompt is dropped, logged and counted (`Prompts.empty_rows`, shown in the commands' summaries);
- a system message in a prompt is refused with its row: trl-sso places the principle itself (the system message under
  the `system` placement), so a prompt holds only user and assistant turns;
- a prompt longer than a command's `max_length` (`online`, like `train`) is dropped and counted by that command.
"""

import json
import logging
from importlib.resources import files


logger = logging.getLogger(__name__)


class Prompts(list):
    """The prompts of a set, as message lists, and the rows dropped as empty (`empty_rows`)."""

    def __init__(self, prompts, empty_rows=()):
        super().__init__(prompts)
        self.empty_rows = tuple(empty_rows)


def packaged_prompts(name: str = "default_prompts") -> list[dict]:
    """A packaged prompt set as `{"category", "prompt"}` records: `default_prompts` (200, for generation) or
    `eval_prompts` (40 held-out prompts for `trl-sso evaluate`, disjoint from the first)."""
    text = files("trl_sso").joinpath(f"resources/{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def default_prompts() -> list[dict]:
    """The packaged generation prompts, as `{"category", "prompt"}` records."""
    return packaged_prompts("default_prompts")


def _as_messages(value, index: int, column: str, source: str) -> list[dict] | None:
    """The messages of one prompt, or None for an empty one."""
    if isinstance(value, str):
        return [{"role": "user", "content": value.strip()}] if value.strip() else None
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        if any(m["role"] == "system" for m in value):
            raise ValueError(
                f"Row {index} of the prompt column {column!r} of {source!r} holds a system message. trl-sso places "
                "the principle itself (in the system message under the `system` placement), so a prompt holds only "
                "user and assistant turns: drop the system message or fold it into the user turn."
            )
        return value if any(m["role"] == "user" and str(m["content"]).strip() for m in value) else None
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
) -> Prompts:
    """Load and normalise a prompt set (see the module docstring; without `source`, the `packaged` set): the first
    `num_prompts` non-empty prompts, the empty ones before them dropped and counted."""
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
    prompts, empty = [], []
    for index, value in enumerate(values):
        if num_prompts is not None and len(prompts) == num_prompts:
            break
        messages = _as_messages(value, index, column, where)
        if messages is None:
            empty.append(index)
        else:
            prompts.append(messages)
    if not prompts:
        raise ValueError(
            f"The prompt set {source or 'default'!r} (column {column!r}) holds no non-empty prompt. Check the file "
            "and `--prompt_column`, or raise `--num_prompts`."
        )
    if empty:
        rows = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        logger.warning(f"Dropped {len(empty)} empty prompts of {where!r} (rows {rows}).")
    if num_prompts is not None and len(prompts) < num_prompts:
        logger.warning(
            f"Asked for {num_prompts} prompts (`--num_prompts`), but {where!r} holds {len(prompts)} non-empty ones: "
            f"using those {len(prompts)}."
        )
    return Prompts(prompts, empty)

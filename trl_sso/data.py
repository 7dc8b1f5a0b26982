"""The canonical SSO record: its columns, validation, the x+ / x- prompt rule, and converters from public formats.

A record holds one query and three on-policy responses, in the standard format (plain strings) or the conversational
format (lists of `{"role", "content"}` messages):

| column            | content                                                   |
|-------------------|-----------------------------------------------------------|
| `prompt`          | the user turn(s) `x`, without a system message            |
| `chosen`          | `y+`, sampled under the positive principle                |
| `rejected`        | `y-`, sampled under the negative principle                |
| `original`        | `y_o`, sampled with no principle                          |
| `positive_system` | the positive principle prompt (a plain string)            |
| `negative_system` | the negative principle prompt (a plain string)            |

Other columns are kept and ignored. `prompt` / `chosen` / `rejected` alone form a valid preference dataset for TRL's
`DPOTrainer` and `RewardTrainer`.

This module imports neither torch nor TRL, so the generator and light tools can use it.
"""

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any


PROMPT, CHOSEN, REJECTED, ORIGINAL = "prompt", "chosen", "rejected", "original"
POSITIVE_SYSTEM, NEGATIVE_SYSTEM = "positive_system", "negative_system"
SSO_COLUMNS = (PROMPT, CHOSEN, REJECTED, ORIGINAL, POSITIVE_SYSTEM, NEGATIVE_SYSTEM)
MAIN_PAIR_COLUMNS = (PROMPT, CHOSEN, REJECTED)
TEXT_COLUMNS = (PROMPT, CHOSEN, REJECTED, ORIGINAL)  # string or message list, one format per record
SYSTEM_COLUMNS = (POSITIVE_SYSTEM, NEGATIVE_SYSTEM)  # always plain strings

# How a principle is joined to the query when it cannot be a system message (standard format, or a chat template that
# rejects the system role).
PRINCIPLE_SEPARATOR = "\n\n"


class SSODataError(ValueError):
    """A dataset or record does not follow the canonical SSO schema. The message names the row, column and fix."""


# ----------------------------------------------------------------------------------------------------------------------
# The x+ / x- rule, shared by the trainer and the generator


_SYSTEM_PROBE = "trl-sso-system-probe"


@lru_cache(maxsize=64)
def _template_renders_system(tokenizer: Any, chat_template: str | None) -> bool:
    messages = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "hi"}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # jinja2's TemplateError or a template's own raise: the role is refused
        return False
    return _SYSTEM_PROBE in str(rendered)


def supports_system_role(processing_class: Any) -> bool:
    """Whether the chat template of `processing_class` renders a system message.

    Templates that raise on a system role (e.g. Gemma's) or silently drop it count as not supporting it.
    """
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    return _template_renders_system(tokenizer, getattr(tokenizer, "chat_template", None))


def build_steered_prompt(prompt: str | list[dict], system: str, processing_class: Any = None) -> str | list[dict]:
    """Build `x+` or `x-`: the query `prompt` under the principle prompt `system`.

    The one rule used by both the trainer and the generator, so that the model is trained on exactly what it was
    sampled from:
    - conversational prompt: the principle becomes the system message; if the chat template of `processing_class`
      does not render a system role, it is prepended to the first user turn instead, separated by a blank line;
    - standard (string) prompt: the principle is prepended to the prompt, separated by a blank line.

    Example:
    ```python
    >>> build_steered_prompt([{"role": "user", "content": "Hi"}], "Be kind.")
    [{'role': 'system', 'content': 'Be kind.'}, {'role': 'user', 'content': 'Hi'}]
    >>> build_steered_prompt("Hi", "Be kind.")
    'Be kind.\\n\\nHi'

    ```
    """
    if isinstance(prompt, str):
        return f"{system}{PRINCIPLE_SEPARATOR}{prompt}"
    if processing_class is None or supports_system_role(processing_class):
        return [{"role": "system", "content": system}, *prompt]
    messages = [dict(message) for message in prompt]
    for message in messages:
        if message["role"] == "user":
            message["content"] = f"{system}{PRINCIPLE_SEPARATOR}{message['content']}"
            return messages
    raise SSODataError("A conversational prompt needs at least one user turn to carry the principle.")


# ----------------------------------------------------------------------------------------------------------------------
# Validation


def required_columns(objective: str = "policy", steer_coef: float = 0.1) -> tuple[str, ...]:
    """The columns an SSO objective reads: the main pair alone needs only `prompt` / `chosen` / `rejected`."""
    if objective == "policy" and steer_coef == 0:
        return MAIN_PAIR_COLUMNS
    return SSO_COLUMNS  # the steering pairs read every column (the generator objective too, minus the main pair)


def check_columns(column_names: Iterable[str], required: Iterable[str]) -> None:
    """Raise an `SSODataError` naming the missing columns and how to obtain them."""
    missing = [column for column in required if column not in set(column_names)]
    if not missing:
        return
    hint = ""
    if set(missing) & {ORIGINAL, POSITIVE_SYSTEM, NEGATIVE_SYSTEM}:
        hint = (
            " SSO needs on-policy responses sampled under contrastive principles: turn plain preference data or "
            "prompts into SSO records with the trl-sso generator first (`trl-sso generate`), convert a published SSO "
            "dataset with `trl_sso.data.convert_reference_dataset`, or set `sso_steer_coef=0` to train on the "
            "main pair (prompt, chosen, rejected) alone."
        )
    raise SSODataError(
        f"The dataset is missing the SSO column(s) {missing} (it has {sorted(column_names)}).{hint}"
    )


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value)


def validate_record(record: Mapping[str, Any], index: int, columns: Iterable[str] = SSO_COLUMNS) -> None:
    """Check one record of the canonical schema; raise an `SSODataError` naming row `index`, the column and the fix."""
    columns = tuple(columns)
    text_columns = [c for c in TEXT_COLUMNS if c in columns]
    formats = {}
    for column in text_columns:
        value = record.get(column)
        where = f"Row {index}, column '{column}'"
        if isinstance(value, str):
            formats[column] = "standard"
            if not value.strip():
                raise SSODataError(f"{where} is an empty string. Fill it in or drop the row before training.")
        elif _is_messages(value):
            formats[column] = "conversational"
            if not value:
                raise SSODataError(f"{where} is an empty message list. Fill it in or drop the row before training.")
            for message in value:
                if not isinstance(message["content"], str) or not message["content"].strip():
                    raise SSODataError(
                        f"{where} holds a {message['role']!r} message with empty content. Fill it in or drop the row."
                    )
        else:
            raise SSODataError(
                f"{where} must be a string (standard format) or a list of {{'role', 'content'}} messages "
                f"(conversational format), got {type(value).__name__}: {str(value)[:80]!r}."
            )
    if len(set(formats.values())) > 1:
        detail = ", ".join(f"'{c}' is {f}" for c, f in formats.items())
        raise SSODataError(
            f"Row {index} mixes formats across columns ({detail}). Use plain strings in all of {text_columns}, or "
            "message lists in all of them."
        )
    if formats.get(PROMPT) == "conversational":
        roles = [message["role"] for message in record[PROMPT]]
        if "system" in roles:
            raise SSODataError(
                f"Row {index}, column 'prompt' contains a system message. SSO puts the principle prompts "
                f"('{POSITIVE_SYSTEM}', '{NEGATIVE_SYSTEM}') in the system slot, so the prompt must hold only the "
                "user (and earlier assistant) turns: move a general system prompt into both principle columns or "
                "drop it."
            )
        if "user" not in roles:
            raise SSODataError(f"Row {index}, column 'prompt' has no user turn. Add the query as a 'user' message.")
    for column in SYSTEM_COLUMNS:
        if column not in columns:
            continue
        value = record.get(column)
        if not isinstance(value, str):
            raise SSODataError(
                f"Row {index}, column '{column}' must be a plain string (the principle prompt), got "
                f"{type(value).__name__}."
            )
        if not value.strip():
            raise SSODataError(
                f"Row {index}, column '{column}' is an empty string: every SSO record needs both principle prompts. "
                "Regenerate the row or drop it."
            )


def validate_dataset(dataset: Iterable[Mapping[str, Any]], columns: Iterable[str] = SSO_COLUMNS) -> None:
    """Check every record of `dataset` (a `datasets.Dataset` or any iterable of dicts) against the canonical schema."""
    columns = tuple(columns)
    if hasattr(dataset, "column_names") and dataset.column_names is not None:
        check_columns(dataset.column_names, columns)
    for index, record in enumerate(dataset):
        if index == 0 and not hasattr(dataset, "column_names"):
            check_columns(record.keys(), columns)
        validate_record(record, index, columns)


# ----------------------------------------------------------------------------------------------------------------------
# Converters from the public reference formats


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _turn_value(turns: Any, speaker: str) -> str | None:
    """The last `value` said by `speaker` ("human" / "gpt") in a list of `{"from", "value"}` turns."""
    if isinstance(turns, str):
        return turns
    values = [turn["value"] for turn in turns or [] if turn.get("from") == speaker]
    return values[-1] if values else None


def from_reference_record(record: Mapping[str, Any], conversational: bool = True, index: int = 0) -> dict[str, Any]:
    """Convert one record of a public SSO reference format to the canonical schema.

    Two formats are recognised:
    - v1 (online SSO release): `instruction`, `p_system`, `n_system`, `system`, `chosen`, `rejected`, `raw`, all
      strings;
    - v2 (generator release): `prompt`, `p_system`, `n_system`, and `chosen` / `rejected` / `raw` as
      `[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]` lists.

    `raw` becomes `original`, `p_system` / `n_system` become `positive_system` / `negative_system`. The v1 `system`
    column (the generic system prompt of the plain query) is kept as `reference_system` and is not trained on, since
    the canonical prompt carries no system message. Other columns are kept. With `conversational=True` the texts become
    message lists (a user turn, an assistant turn) so that chat templates apply; otherwise plain strings.
    """
    if "instruction" in record:
        query = record["instruction"]
        responses = {CHOSEN: record.get("chosen"), REJECTED: record.get("rejected"), ORIGINAL: record.get("raw")}
    elif PROMPT in record and "p_system" in record:
        query = record[PROMPT] if isinstance(record[PROMPT], str) else _turn_value(record[PROMPT], "human")
        query = query or _turn_value(record.get("chosen"), "human")
        responses = {
            CHOSEN: _turn_value(record.get("chosen"), "gpt"),
            REJECTED: _turn_value(record.get("rejected"), "gpt"),
            ORIGINAL: _turn_value(record.get("raw"), "gpt"),
        }
    else:
        raise SSODataError(
            f"Row {index} matches neither public SSO format: expected 'instruction', 'p_system', 'n_system', "
            f"'chosen', 'rejected', 'raw' (v1) or 'prompt', 'p_system', 'n_system' with from/value turn lists (v2); "
            f"got columns {sorted(record)}."
        )
    for column, value in {PROMPT: query, **responses}.items():
        if not isinstance(value, str):
            raise SSODataError(
                f"Row {index}: no text found for '{column}' in the reference record (got {str(value)[:80]!r}). "
                "Check that the response lists hold a 'gpt' turn and the prompt a 'human' turn."
            )
    converted = {k: v for k, v in record.items() if k not in {"instruction", "p_system", "n_system", "system", "raw"}}
    if "system" in record:
        converted["reference_system"] = record["system"]
    converted[PROMPT] = [{"role": "user", "content": query}] if conversational else query
    for column, text in responses.items():
        converted[column] = _assistant(text) if conversational else text
    converted[POSITIVE_SYSTEM] = record["p_system"]
    converted[NEGATIVE_SYSTEM] = record["n_system"]
    return converted


def convert_reference_dataset(dataset: Any, conversational: bool = True, num_proc: int | None = None) -> Any:
    """Convert a `datasets.Dataset` in a public SSO reference format (see `from_reference_record`) to the canonical
    schema, keeping extra columns. The result trains with `SSOTrainer` and, on prompt/chosen/rejected, with
    `DPOTrainer`."""
    reference_columns = {"instruction", "p_system", "n_system", "system", "raw", "chosen", "rejected", PROMPT}
    return dataset.map(
        lambda record, index: from_reference_record(record, conversational, index),
        with_indices=True,
        remove_columns=[c for c in dataset.column_names if c in reference_columns],
        num_proc=num_proc,
        desc="Converting to the SSO schema",
    )

"""The canonical SSO record: its columns, the table of its three preference pairs, the record constructor, validation,
the x+ / x- prompt rule, converters from public formats, and the one loader from a folder, a file or the Hub.

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

An optional `principle_placement` column records where the principle went when the responses were sampled
(`PLACEMENTS`; absent: the system message), so that x+ and x- are rebuilt exactly as they were. Other columns are kept
and ignored. `prompt` / `chosen` / `rejected` alone form a valid preference dataset for TRL's
`DPOTrainer` and `RewardTrainer`.

This module imports neither torch nor TRL, so the generator and light tools can use it.
"""

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from .names import hub_id
from .retries import with_retries


PROMPT, CHOSEN, REJECTED, ORIGINAL = "prompt", "chosen", "rejected", "original"
POSITIVE_SYSTEM, NEGATIVE_SYSTEM = "positive_system", "negative_system"
SSO_COLUMNS = (PROMPT, CHOSEN, REJECTED, ORIGINAL, POSITIVE_SYSTEM, NEGATIVE_SYSTEM)
MAIN_PAIR_COLUMNS = (PROMPT, CHOSEN, REJECTED)
RESPONSE_COLUMNS = (CHOSEN, REJECTED, ORIGINAL)  # y+, y-, y_o
TEXT_COLUMNS = (PROMPT, *RESPONSE_COLUMNS)  # string or message list, one format per record
SYSTEM_COLUMNS = (POSITIVE_SYSTEM, NEGATIVE_SYSTEM)  # always plain strings

# How a principle is joined to the query when it is not a system message (placed in a user turn, standard format, or a
# chat template that rejects the system role).
PRINCIPLE_SEPARATOR = "\n\n"

# Where the principle goes in x+ and x-, recorded per record in this column, so that training rebuilds x+ / x- exactly
# as they were sampled. Data without the column (public SSO releases) put it in the system message.
PLACEMENT = "principle_placement"
PLACEMENTS = {
    "system": "the system message (the start of the first user turn where the chat template has no system role)",
    "before_question": "the start of the first user turn, followed by a blank line",
    "after_question": "the end of the last user turn, after a blank line",
}
DEFAULT_PLACEMENT = "system"


class SSODataError(ValueError):
    """A dataset or record does not follow the canonical SSO schema. The message names the row, column and fix."""


# ---------------------------------------------------------------------------------------------------------------------
# The three preference pairs of a record


class Pair(NamedTuple):
    """One SSO preference pair, and everything keyed by it:
    - `principle`: the column of the principle that steers its prompt (`None`: the plain query `x`);
    - `winner`, `loser`: the columns of its two responses;
    - `prefix`: the prefix of its tokenized columns and of its collated block (the main pair keeps DPO's names);
    - `term`: the name of its base loss among the loss terms (`loss/<term>`);
    - `metrics`: the prefix of its logged metrics (the main pair logs under DPO's own names).
    """

    principle: str | None
    winner: str
    loser: str
    prefix: str
    term: str
    metrics: str

    @property
    def token_columns(self) -> tuple[str, str, str]:
        """The tokenized columns of the pair: (prompt, winner, loser) token ids."""
        return (f"{self.prefix}prompt_ids", f"{self.prefix}chosen_ids", f"{self.prefix}rejected_ids")

    @property
    def ref_columns(self) -> tuple[str, str]:
        """The columns of its precomputed reference log-probabilities: (winner, loser)."""
        return (f"ref_{self.prefix}chosen_logps", f"ref_{self.prefix}rejected_logps")


PAIRS: dict[str, Pair] = {
    "main": Pair(None, CHOSEN, REJECTED, "", "main", ""),  # (x; y+ > y-)
    "pos": Pair(POSITIVE_SYSTEM, CHOSEN, REJECTED, "pos_", "steer_pos", "steer_pos/"),  # (x+; y+ > y-)
    "neg": Pair(NEGATIVE_SYSTEM, ORIGINAL, CHOSEN, "neg_", "steer_neg", "steer_neg/"),  # (x-; y_o > y+)
}


def pairs_in_use(objective: str = "policy", steer_coef: float = 0.1) -> tuple[str, ...]:
    """The pairs an SSO objective trains on, in the order they are forwarded: `("main",)` (policy, steering off),
    `("main", "pos", "neg")` (policy: the main pair first, since the weight `W` of the steering pairs is a function of
    it) or `("pos", "neg")` (generator)."""
    if objective == "generator":
        return ("pos", "neg")
    return ("main",) if steer_coef == 0 else ("main", "pos", "neg")


def required_columns(objective: str = "policy", steer_coef: float = 0.1) -> tuple[str, ...]:
    """The columns an SSO objective reads: the main pair alone needs only `prompt` / `chosen` / `rejected`."""
    pairs = [PAIRS[name] for name in pairs_in_use(objective, steer_coef)]
    used = {PROMPT} | {column for pair in pairs for column in (pair.principle, pair.winner, pair.loser) if column}
    return tuple(column for column in SSO_COLUMNS if column in used)


def pair_texts(
    record: Mapping[str, Any],
    pairs: Iterable[str] = tuple(PAIRS),
    processing_class: Any = None,
    placement: str | None = None,
) -> dict[str, tuple[Any, Any, Any]]:
    """`(prompt, winner, loser)` of each pair named in `pairs`, for one canonical record; the prompts of the steering
    pairs are built by `build_steered_prompt`, with the principle where the record says it was sampled
    (`principle_placement`; `placement` is the configured one, checked against it).

    Example:
    ```python
    >>> record = make_record("Hi", " Hello!", " Go away.", " Hey.", "Be kind.", "Be rude.")
    >>> pair_texts(record, ("main", "neg"))
    {'main': ('Hi', ' Hello!', ' Go away.'), 'neg': ('Be rude.\\n\\nHi', ' Hey.', ' Hello!')}

    ```
    """
    texts = {}
    where = record_placement(record, placement)
    for name in pairs:
        pair = PAIRS[name]
        prompt = record[PROMPT]
        if pair.principle is not None:
            prompt = build_steered_prompt(prompt, record[pair.principle], processing_class, where)
        texts[name] = (prompt, record[pair.winner], record[pair.loser])
    return texts


def make_record(
    prompt: str | list[dict],
    chosen: str | list[dict],
    rejected: str | list[dict],
    original: str | list[dict],
    positive_system: str,
    negative_system: str,
    *,
    conversational: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One canonical SSO record, with the columns of `extra` (provenance, ...) after the SSO columns.

    In the conversational format (`conversational=True`, or a message-list `prompt` when it is `None`), a string
    prompt becomes a user turn and string responses become assistant turns; otherwise the values are kept as given.

    Example:
    ```python
    >>> make_record("Hi", "Hello!", "Go away.", "Hey.", "Be kind.", "Be rude.", conversational=True)["chosen"]
    [{'role': 'assistant', 'content': 'Hello!'}]

    ```
    """
    if conversational is None:
        conversational = not isinstance(prompt, str)
    if conversational:
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        chosen, rejected, original = (_assistant(r) if isinstance(r, str) else r for r in (chosen, rejected, original))
    record = {
        PROMPT: prompt,
        CHOSEN: chosen,
        REJECTED: rejected,
        ORIGINAL: original,
        POSITIVE_SYSTEM: positive_system,
        NEGATIVE_SYSTEM: negative_system,
    }
    record.update(extra)
    return record


# ---------------------------------------------------------------------------------------------------------------------
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


def render(tokenizer: Any, messages: list[dict]) -> str:
    """The prompt text a model continues: the chat template of `tokenizer` with the generation prompt."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def supports_system_role(processing_class: Any) -> bool:
    """Whether the chat template of `processing_class` renders a system message.

    Templates that raise on a system role (e.g. Gemma's) or silently drop it count as not supporting it.
    """
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    return _template_renders_system(tokenizer, getattr(tokenizer, "chat_template", None))


def build_steered_prompt(
    prompt: str | list[dict], system: str, processing_class: Any = None, placement: str = DEFAULT_PLACEMENT
) -> str | list[dict]:
    """Build `x+` or `x-`: the query `prompt` under the principle prompt `system`, placed as `placement` says.

    The one rule used by both the trainer and the generator, so that the model is trained on exactly what it was
    sampled from (`PLACEMENTS`):
    - `"system"`: a conversational prompt gets the principle as its system message, or, where the chat template of
      `processing_class` does not render a system role, at the start of its first user turn; a standard (string)
      prompt gets it in front;
    - `"before_question"`: at the start of the first user turn (in front of a string prompt);
    - `"after_question"`: at the end of the last user turn (after a string prompt).
    A principle joins the turn's text with a blank line.

    Example:
    ```python
    >>> build_steered_prompt([{"role": "user", "content": "Hi"}], "Be kind.")
    [{'role': 'system', 'content': 'Be kind.'}, {'role': 'user', 'content': 'Hi'}]
    >>> build_steered_prompt([{"role": "user", "content": "Hi"}], "Be kind.", placement="after_question")
    [{'role': 'user', 'content': 'Hi\\n\\nBe kind.'}]
    >>> build_steered_prompt("Hi", "Be kind.")
    'Be kind.\\n\\nHi'

    ```
    """
    if placement not in PLACEMENTS:
        raise SSODataError(f"Unknown principle placement {placement!r}; use one of {list(PLACEMENTS)}.")
    after = placement == "after_question"
    if isinstance(prompt, str):
        return f"{prompt}{PRINCIPLE_SEPARATOR}{system}" if after else f"{system}{PRINCIPLE_SEPARATOR}{prompt}"
    if placement == "system" and (processing_class is None or supports_system_role(processing_class)):
        return [{"role": "system", "content": system}, *prompt]
    messages = [dict(message) for message in prompt]
    users = [message for message in messages if message["role"] == "user"]
    if not users:
        raise SSODataError("A conversational prompt needs at least one user turn to carry the principle.")
    if after:
        users[-1]["content"] = f"{users[-1]['content']}{PRINCIPLE_SEPARATOR}{system}"
    else:
        users[0]["content"] = f"{system}{PRINCIPLE_SEPARATOR}{users[0]['content']}"
    return messages


def record_placement(record: Mapping[str, Any], configured: str | None = None, index: int | None = None) -> str:
    """Where the principle of `record` goes: its `principle_placement` column, else `configured`, else the system
    message. A record whose column differs from a `configured` placement is refused (an `SSODataError` naming both):
    training must rebuild x+ and x- exactly as they were sampled."""
    recorded = record.get(PLACEMENT)
    where = f"Row {index}" if index is not None else "A record"
    if recorded is None:
        return configured or DEFAULT_PLACEMENT
    if recorded not in PLACEMENTS:
        raise SSODataError(
            f"{where}, column '{PLACEMENT}' holds {recorded!r}, which is no placement trl-sso knows: use one of "
            f"{list(PLACEMENTS)}."
        )
    if configured is not None and configured != recorded:
        raise SSODataError(
            f"{where} was sampled with its principle placed at {recorded!r} (column '{PLACEMENT}'), but "
            f"`sso_principle_placement` is {configured!r}. x+ and x- must be rebuilt as they were sampled: leave "
            f"`sso_principle_placement` unset to follow the data, or regenerate the data with `--principle_placement "
            f"{configured}`."
        )
    return recorded


# ---------------------------------------------------------------------------------------------------------------------
# Validation


def check_columns(column_names: Iterable[str], required: Iterable[str]) -> None:
    """Raise an `SSODataError` naming the missing columns and how to obtain them."""
    missing = [column for column in required if column not in set(column_names)]
    if not missing:
        return
    hint = ""
    if set(missing) & {ORIGINAL, POSITIVE_SYSTEM, NEGATIVE_SYSTEM}:
        hint = (
            " SSO needs on-policy responses sampled under contrastive principles. Two ways out: make the SSO columns "
            "from this dataset's prompts with the generator (`trl-sso generate --prompts <dataset or file> "
            "--output_dir <folder>` samples y+, y- and y_o from your model; `trl_sso.data.convert_reference_dataset` "
            "converts a published SSO dataset), or train the main pair (prompt, chosen, rejected) on the data as it "
            "is with `sso_steer_coef=0, sso_use_weight=False`, which is DPO."
        )
    raise SSODataError(f"The dataset is missing the SSO column(s) {missing} (it has {sorted(column_names)}).{hint}")


def _is_messages(value: Any) -> bool:
    """A message list: `{'role', 'content'}` messages, where an assistant turn may carry `tool_calls` in place of (or
    beside) its content, as in TRL's tool-calling preference data."""
    return isinstance(value, list) and all(
        isinstance(m, Mapping) and "role" in m and ("content" in m or "tool_calls" in m) for m in value
    )


def _message_problem(message: Mapping[str, Any]) -> str | None:
    """What is wrong with one message of a valid message list, or None: text content must not be empty, unless the
    message calls tools (an assistant turn whose content may be empty or missing)."""
    content = message.get("content")
    if message.get("tool_calls"):
        if content is None or isinstance(content, str):
            return None
        return f"holds a {message['role']!r} message with tool calls whose content is no string"
    if isinstance(content, list):
        return (
            f"holds a {message['role']!r} message whose content is a list of parts (vision-language data), which "
            "SSOTrainer does not train on: give the content as text"
        )
    if not isinstance(content, str) or not content.strip():
        return f"holds a {message['role']!r} message with empty content. Fill it in or drop the row"
    return None


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
                problem = _message_problem(message)
                if problem:
                    raise SSODataError(f"{where} {problem}.")
        else:
            held = "null" if value is None else f"{type(value).__name__} {str(value)[:80]!r}"
            raise SSODataError(
                f"{where} must be a string (standard format) or a list of {{'role', 'content'}} messages "
                f"(conversational format; assistant turns may carry 'tool_calls'); it holds {held}. Fill it in or "
                "drop the row."
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


def check_one_format(dataset: Any) -> None:
    """Refuse a dataset whose rows mix the standard format (plain strings) and the conversational format (message
    lists) in a column, naming the first row of each kind. TRL's trainers apply the chat template to the second only,
    so the two kinds of rows would train on sequences built differently; turning strings into messages is not exact
    either (it adds the template), so nothing is converted. Only a column that the loader typed `Json` (mixed values,
    as the JSON loader of datasets 5 does) can mix; other datasets pass at no cost."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return
    for column in TEXT_COLUMNS:
        if column not in dataset.column_names or not isinstance(dataset.features[column], datasets.Json):
            continue
        first: dict[type, int] = {}
        for index, value in enumerate(dataset[column]):
            if isinstance(value, (str, list)):
                first.setdefault(type(value), index)
            if len(first) == 2:
                raise SSODataError(
                    f"Column '{column}' mixes formats: row {first[str]} holds a plain string (standard format) and "
                    f"row {first[list]} a message list (conversational format). Use one format in every row: message "
                    "lists for chat models, or plain strings."
                )


def validate_dataset(dataset: Iterable[Mapping[str, Any]], columns: Iterable[str] = SSO_COLUMNS) -> None:
    """Check every record of `dataset` (a `datasets.Dataset` or any iterable of dicts) against the canonical schema,
    and that its rows use one format (`check_one_format`)."""
    columns = tuple(columns)
    if hasattr(dataset, "column_names") and dataset.column_names is not None:
        check_columns(dataset.column_names, columns)
    check_one_format(dataset)
    for index, record in enumerate(dataset):
        if index == 0 and not hasattr(dataset, "column_names"):
            check_columns(record.keys(), columns)
        validate_record(record, index, columns)


def validate_source(dataset: Any, source: str, columns: Iterable[str]) -> None:
    """`validate_dataset` at the boundary of a command, the error naming where the data came from. A streamed dataset
    is checked row by row as the trainer reads it instead."""
    import datasets

    columns = tuple(columns)
    if not isinstance(dataset, datasets.Dataset) or not set(columns) <= set(dataset.column_names):
        return  # the trainer names missing columns (or extracts the implicit prompt of plain preference data)
    try:
        validate_dataset(dataset, columns)
    except SSODataError as error:
        raise SSODataError(f"{source}: {error}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Converters from the public reference formats


# Columns of the public reference formats that the conversion replaces (the others are kept)
_REFERENCE_COLUMNS = {"instruction", "p_system", "n_system", "system", "raw", *SSO_COLUMNS}


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
    extra = {k: v for k, v in record.items() if k not in _REFERENCE_COLUMNS}
    if "system" in record:
        extra["reference_system"] = record["system"]
    return make_record(
        query,
        responses[CHOSEN],
        responses[REJECTED],
        responses[ORIGINAL],
        record["p_system"],
        record["n_system"],
        conversational=conversational,
        **extra,
    )


def convert_reference_dataset(dataset: Any, conversational: bool = True, num_proc: int | None = None) -> Any:
    """Convert a `datasets.Dataset` in a public SSO reference format (see `from_reference_record`) to the canonical
    schema, keeping extra columns. The result trains with `SSOTrainer` and, on prompt/chosen/rejected, with
    `DPOTrainer`."""
    return dataset.map(
        lambda record, index: from_reference_record(record, conversational, index),
        with_indices=True,
        remove_columns=[c for c in dataset.column_names if c in _REFERENCE_COLUMNS],
        num_proc=num_proc,
        desc="Converting to the SSO schema",
    )


def to_canonical(dataset: Any, conversational: bool = True) -> Any:
    """`dataset` unchanged when it has the SSO columns or is plain preference data; converted when it is in one of
    the public reference formats (see `from_reference_record`)."""
    columns = set(dataset.column_names or [])  # a streamed dataset may not know its columns before reading
    if set(SSO_COLUMNS) <= columns or not {"p_system", "n_system"} <= columns:
        return dataset
    if not ({"instruction", "raw"} <= columns or {PROMPT, CHOSEN, "raw"} <= columns):
        return dataset
    return convert_reference_dataset(dataset, conversational=conversational)


# ---------------------------------------------------------------------------------------------------------------------
# Loading from wherever a user points

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# Where `trl-sso generate` writes its records inside the output folder: the Hub's file layout, so that the folder loads
# with `datasets.load_dataset(folder)` (its README lists the config) and trains with `trl dpo --dataset_name folder`.
GENERATED_DATA_DIR = "data"
GENERATED_DATA_FILE = "train-00000-of-00001.parquet"


def _check_text_file(path: Path, builder: str) -> None:
    """Before a file goes to its builder: it has content and, for text (JSON, JSON Lines, CSV), is UTF-8, so that the
    error names the file and the line at fault."""
    if builder == "parquet":
        if path.stat().st_size == 0:
            raise ValueError(f"{str(path)!r} is empty: it holds no rows. Point to a file with data.")
        return
    data = path.read_bytes()
    if not data.strip():
        raise ValueError(f"{str(path)!r} is empty: it holds no rows. Point to a file with data.")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{str(path)!r} is not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}). Save it as UTF-8."
        ) from None


def _find_bad_json_line(path: Path) -> None:
    """After the JSON builder failed on `path`: raise a `ValueError` naming the first line of a JSON Lines file that
    does not parse (a single JSON document that parses passes)."""
    text = path.read_text(encoding="utf-8")
    try:
        json.loads(text)
        return
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{str(path)!r}, line {number}, is not valid JSON ({error.msg}): a JSON Lines file holds one JSON "
                    "object per line."
                ) from None


def load_dataset_split(
    source: str,
    config_name: str | None = None,
    split: str = "train",
    revision: str | None = None,
    token: str | None = None,
    streaming: bool = False,
) -> Any:
    """One split of the dataset at `source`, as it is stored: a folder written by `trl-sso generate`, a saved dataset
    folder (`save_to_disk`), a local JSON/JSONL/CSV/Parquet file, or a Hub dataset id (with `config_name` and
    `revision`; transient Hub failures are retried). With `streaming`, an `IterableDataset` read as it goes."""
    import datasets

    if streaming:
        dataset = load_dataset_split(source, config_name, split, revision, token) if Path(source).exists() else None
        if dataset is not None:  # local data is read as a whole; streaming it is iterating it
            return dataset.to_iterable_dataset()
        return with_retries(
            lambda: datasets.load_dataset(
                source, config_name, split=split, revision=revision, token=token, streaming=True
            ),
            f"Loading dataset {source}",
        )

    path = Path(source)
    if (path / GENERATED_DATA_DIR / GENERATED_DATA_FILE).is_file():  # the output folder of `trl-sso generate`
        if split != "train":
            raise ValueError(f"{source!r} is a `trl-sso generate` folder: it has one split, 'train', not {split!r}.")
        data_file = str(path / GENERATED_DATA_DIR / GENERATED_DATA_FILE)
        return datasets.load_dataset("parquet", data_files=data_file, split="train")
    if path.is_dir() and (path / "dataset").is_dir():
        path = path / "dataset"  # a `trl-sso generate` folder of trl-sso 0.1.0 (Arrow, `save_to_disk`)
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
        _check_text_file(path, builder)
        verbosity = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a parse error is ours to report, in one line
        try:
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as error:  # the builders' parse errors (DatasetGenerationError, ArrowInvalid, ...)
            cause = error.__cause__ or error
            if "corresponds to no data" in str(cause):
                raise ValueError(f"{source!r} holds no rows (a header at most). Point to a file with data.") from error
            if builder == "json":
                _find_bad_json_line(path)
            raise ValueError(
                f"{source!r} could not be read as {builder.upper()} ({type(cause).__name__}: "
                f"{str(cause).splitlines()[0] if str(cause) else 'no detail'}). Check its format and encoding."
            ) from error
        finally:
            datasets.logging.set_verbosity(verbosity)
        if len(dataset) == 0:
            raise ValueError(f"{source!r} holds no rows (a header at most). Point to a file with data.")
        return dataset

    if path.suffix.lower() in FILE_BUILDERS or hub_id(source) is None:
        raise FileNotFoundError(
            f"{source!r} does not exist: no such file or folder, and not a Hub dataset id. Check the path."
        )

    return with_retries(
        lambda: datasets.load_dataset(source, config_name, split=split, revision=revision, token=token),
        f"Loading dataset {source}",
    )


def load_sso_dataset(
    source: str,
    config_name: str | None = None,
    split: str = "train",
    revision: str | None = None,
    conversational: bool = True,
    token: str | None = None,
    streaming: bool = False,
) -> Any:
    """Load an SSO dataset from wherever `source` points (see `load_dataset_split`) in the canonical schema: datasets
    written or published by trl-sso as they are, datasets in the public reference formats converted. With
    `streaming`, an `IterableDataset`.

    Example:
    ```python
    from trl_sso import load_sso_dataset

    round_1 = load_sso_dataset("me/sso-data", "iteration_1")   # a Hub dataset and its config
    local = load_sso_dataset("outputs/quickstart/round_1/data")  # a `trl-sso generate` folder
    ```
    """
    dataset = load_dataset_split(source, config_name, split, revision, token, streaming)
    return to_canonical(dataset, conversational)

"""The rules every option is checked against, wherever its value comes from: the command line, a YAML `--config`, or
Python. One table of ranges (`RANGES`), finiteness for every number, and the types of YAML values (`typed_config`),
all applied before any model loads, each error one sentence naming the option, the value and what it accepts.

This module stays light (no torch, no transformers) so that the commands can check their options at once.
"""

import dataclasses
import json
import math
import types
import typing


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of allowed values; `None` leaves a side open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low end itself is excluded
    high_open: bool = False
    why: str = ""  # what the option means, for the error message

    def holds(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            return f"{'above' if self.low_open else 'at least'} {self.low:g}"
        if self.low is None:
            return f"{'below' if self.high_open else 'at most'} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


AT_LEAST_1, AT_LEAST_0, POSITIVE = Range(low=1), Range(low=0), Range(low=0, low_open=True)
TERM_COEF = Range(low=0, why="Use 0 to turn the term off.")
PROBABILITY, FRACTION = Range(0, 1), Range(0, 1, low_open=True, high_open=True)

# Option name -> its range, for the options that are not declared with a "range" in their metadata (the sampling,
# principle and vLLM options are: `trl_sso.generation.arguments`), mostly training fields and TRL's own.
RANGES: dict[str, Range] = {
    "num_prompts": AT_LEAST_1,
    "policy_num_prompts": AT_LEAST_1,
    "eval_num_prompts": AT_LEAST_1,
    "num_records": AT_LEAST_1,
    "judge_timeout": Range(0, None, low_open=True),
    "eval_max_completion_length": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "rounds": AT_LEAST_1,
    "iteration": AT_LEAST_1,
    # training (SSOConfig and TRL's own fields that users mistype most)
    "sso_steer_coef": TERM_COEF,
    "sso_weight_alpha": Range(
        0, 1, why="It is the share of the chosen response in the weight W (0.5 weighs both responses equally)."
    ),
    "sso_sft_coef": TERM_COEF,
    "beta": POSITIVE,
    "learning_rate": AT_LEAST_0,
    "num_train_epochs": POSITIVE,
    "per_device_train_batch_size": AT_LEAST_1,
    "per_device_eval_batch_size": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1,
    "warmup_ratio": PROBABILITY,
    "weight_decay": AT_LEAST_0,
    "max_grad_norm": AT_LEAST_0,
    "eval_split_ratio": FRACTION,
    "test_split_size": FRACTION,
    "lora_r": AT_LEAST_1,
    "lora_dropout": Range(0, 1, high_open=True),
}


def check_ranges(instance) -> None:
    """Raise a `ValueError` for the first field of the dataclass `instance` that breaks its rule: a number that is not
    finite, or a value outside its range (the field's metadata "range", else `RANGES`)."""
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise ValueError(f"`{f.name}` must be a finite number, got {value}.")
        rule = f.metadata.get("range") or RANGES.get(f.name)
        if rule is not None and not rule.holds(value):
            raise ValueError(
                f"`{f.name}` must be {rule.describe()}, got {value:g}.{' ' + rule.why if rule.why else ''}"
            )


# Options that act only with another one on, and that one: such an option set away from its default while the other
# is off is refused at parse time (it would be ignored without a word)
REQUIRES: dict[str, str] = {
    **dict.fromkeys(
        (
            "vllm_mode",
            "vllm_server_base_url",
            "vllm_server_timeout",
            "vllm_gpu_memory_utilization",
            "vllm_tensor_parallel_size",
            "vllm_max_model_length",
            "vllm_enable_sleep_mode",
        ),
        "use_vllm",
    ),
    "judge_model": "judge",
    "judge_timeout": "judge",
}


def check_requirements(instance) -> None:
    """Raise a `ValueError` for the first option of the dataclass `instance` that is set while the option it acts
    with (`REQUIRES`) is off."""
    fields = {f.name: f for f in dataclasses.fields(instance)}
    for name, switch in REQUIRES.items():
        if name not in fields or switch not in fields or getattr(instance, switch):
            continue
        field = fields[name]
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if getattr(instance, name) != default:
            raise ValueError(
                f"`{name}` only applies with `{switch}`, which is off, so it would be ignored. Set `{switch}` too, or "
                f"leave `{name}` out."
            )


# ---------------------------------------------------------------------------------------------------------------------
# YAML values: the command line's types apply to them too


def _kind(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(arg) for arg in typing.get_args(hint) if arg is not type(None))
    if origin is list:
        return "a list"
    if origin is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _convert(hint, value):
    """`value` as the type `hint` asks for, or a `TypeError`; strings convert as on the command line."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arguments = typing.get_args(hint)
        if value is None and type(None) in arguments:
            return None
        for argument in sorted((a for a in arguments if a is not type(None)), key=lambda a: a is str):
            try:
                return _convert(argument, value)
            except (TypeError, ValueError):
                continue
        raise TypeError
    if origin is list:
        items = value if isinstance(value, list) else [value]  # one value, as `--flag value` gives
        (item,) = typing.get_args(hint) or (typing.Any,)
        return [_convert(item, v) for v in items]
    if origin is typing.Literal:
        if value in typing.get_args(hint):
            return value
        raise TypeError
    if origin is dict or hint is dict:
        return value if isinstance(value, dict) else _json_mapping(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return int(value)
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value)  # YAML reads `1e-5` (no dot) as a string
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError
    return value  # enums, dataclasses and the like: their own classes check them


def _json_mapping(value):
    if isinstance(value, str):
        loaded = json.loads(value)
        if isinstance(loaded, dict):
            return loaded
    raise TypeError


def _dataset_entry_keys() -> tuple[str, ...]:
    from trl.scripts.utils import DatasetConfig  # only when a config has a mixture: trl is imported by then anyway

    return tuple(f.name for f in dataclasses.fields(DatasetConfig))


def _mixture(value, source: str) -> list[dict]:
    """The entries of a `datasets:` mixture (TRL's `DatasetMixtureConfig`), each a mapping with a `path`."""
    if not isinstance(value, list):
        raise ValueError(
            f"`datasets` in {source} must be a list of datasets, each a mapping with a `path`, e.g. "
            "`datasets: [{path: trl-lib/ultrafeedback_binarized}]`."
        )
    keys = _dataset_entry_keys()
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not entry.get("path"):
            raise ValueError(f"`datasets` entry {index} in {source} must be a mapping with a `path`, got {entry!r}.")
        unknown = sorted(set(entry) - set(keys))
        if unknown:
            raise ValueError(
                f"`datasets` entry {index} in {source} has unknown key(s) {unknown}; the keys are {list(keys)}."
            )
    return value


def typed_config(dataclass_types, config: dict, source: str) -> dict:
    """The values of a YAML config converted to the types of the fields they set, as the command line would convert
    them; a `ValueError` names the first key whose value does not fit. Keys no dataclass knows pass through (the
    parsers refuse them)."""
    fields = {}
    for cls in dataclass_types:
        hints = typing.get_type_hints(cls)
        fields.update({f.name: (hints[f.name], f) for f in dataclasses.fields(cls) if f.init})
    converted = {}
    for key, value in config.items():
        if key not in fields:
            converted[key] = value
            continue
        hint, f = fields[key]
        if key == "datasets":
            converted[key] = _mixture(value, source)
            continue
        try:
            converted[key] = _convert(hint, value)
        except (TypeError, ValueError):
            raise ValueError(f"`{key}` in {source} must be {_kind(hint)}, got {value!r}.") from None
        choices = f.metadata.get("choices")
        if choices and converted[key] is not None and converted[key] not in choices:
            raise ValueError(f"`{key}` in {source} must be one of {list(choices)}, got {value!r}.")
    return converted

"""Build argparse options from a dataclass whose fields carry `metadata={"help": ...}` (no transformers import)."""

import argparse
import dataclasses
import types
import typing


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_dataclass_options(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        args = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else ()
        base = next((a for a in args if a is not type(None)), kind) if args else kind
        options = {"default": f.default, "help": f.metadata.get("help", "") + (f" (default: {f.default})" if f.default not in (None, dataclasses.MISSING) else "")}
        if "choices" in f.metadata:
            options["choices"] = f.metadata["choices"]
        if base is bool:
            options.update(type=_parse_bool, nargs="?", const=True, metavar="{true,false}")
        elif typing.get_origin(base) is list:
            options.update(type=typing.get_args(base)[0], nargs="+")
        else:
            options["type"] = base
        parser.add_argument(f"--{f.name}", **options)


def to_dataclass(cls, namespace: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(namespace).items() if k in names})

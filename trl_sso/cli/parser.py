"""The one way every `trl-sso` command reads its options: dataclasses whose fields are flags, as TRL's `TrlParser`
reads them.

- every field is a flag with its help text, also in kebab case (`--max-new-tokens`); booleans take `--flag`,
  `--flag false` and, when on by default, `--no_flag`; `choices` in a field's metadata are checked;
- `--config recipe.yaml` sets the defaults (an `env:` mapping sets environment variables), flags after it override
  it, and a key no dataclass knows is an error;
- renamed flags keep working for one release with a deprecation warning;
- a bad value is one line on stderr naming the flag, and exit code 2.

Commands whose dataclasses come from TRL and transformers (`SSOConfig`, `ModelConfig`, ...) parse with TRL's own
`TrlParser` (`trl_parser`); the light commands (`generate`, `push`) parse with `DataclassParser`, which follows the
same rules for fields of plain types without importing transformers, so that their `--help` answers at once.
"""

import argparse
import copy
import dataclasses
import os
import re
import sys
import types
import typing
import warnings

from ..options import typed_config


CONFIG_HELP = "Every option can also be set in a YAML file given with `--config FILE.yaml`; flags override the file."


def string_to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true or false), got {value!r}")


class _Conventions:
    """What both parsers add to argparse: one-line errors, renamed flags, and YAML configs."""

    renamed: dict[str, str] = {}  # old flag name (no dashes) -> new name, accepted with a deprecation warning
    foreign: dict[str, str] = {}  # option name (no dashes) of a sibling command -> that command

    def error(self, message):
        unknown = (
            message.split("unrecognized arguments: ", 1)[1].split() if "unrecognized arguments: " in message else []
        )
        name = unknown[0].split("=")[0].lstrip("-").replace("-", "_") if unknown else None
        if name in self.foreign:
            message = (
                f"`--{name}` is an option of `trl-sso {self.foreign[name]}`, not of `{self.prog}`: remove it "
                f"(unrecognized arguments: {' '.join(unknown)})"
            )
        self.exit(2, f"{self.prog}: error: {message}. See `{self.prog} --help`.\n")

    def _rename(self, old: str, new: str) -> None:
        warnings.warn(
            f"`{self.prog}`: `{old}` is deprecated and will be removed in trl-sso 0.2; use `{new}` instead.",
            FutureWarning,
            stacklevel=4,
        )

    def rename_deprecated(self, argv: list[str]) -> list[str]:
        """`argv` with renamed flags replaced by their new names (`--old value`, `--old=value`, `--old-kebab`)."""
        out = []
        for token in argv:
            flag, sep, value = token.partition("=")
            old = flag.lstrip("-").replace("-", "_") if flag.startswith("--") else None
            if old in self.renamed:
                self._rename(flag, f"--{self.renamed[old]}")
                token = f"--{self.renamed[old]}{sep}{value}"
            out.append(token)
        return out

    def typed(self, config: dict, source: str) -> dict:
        """`config`'s values converted to their fields' types (`trl_sso.options.typed_config`), or a one-line error."""
        try:
            return typed_config(self.dataclass_types, config, source)
        except ValueError as error:
            self.error(f"argument --config: {str(error).rstrip('.')}")

    def read_config(self, argv: list[str]) -> tuple[list[str], dict]:
        """Split `--config FILE` off `argv`; returns the rest of `argv` and the file's mapping (its `env:` applied,
        its values converted to the types of their fields)."""
        if "--config" not in argv:
            return argv, {}
        import yaml

        index = argv.index("--config")
        if index + 1 >= len(argv):
            self.error("argument --config: expected a YAML file")
        path = argv[index + 1]
        argv = argv[:index] + argv[index + 2 :]
        try:
            with open(path, encoding="utf-8") as file:
                config = yaml.safe_load(file)
        except OSError as error:
            self.error(f"argument --config: cannot read {path!r} ({error.strerror})")
        except yaml.YAMLError as error:
            self.error(f"argument --config: {path!r} is not valid YAML ({str(error).splitlines()[0]})")
        if not isinstance(config, dict):
            self.error(f"argument --config: {path!r} must hold a YAML mapping of option names to values")
        for key, value in (config.pop("env", None) or {}).items():
            os.environ[key] = str(value)
        for old in [key for key in config if key in self.renamed]:
            self._rename(f"{old}:", f"{self.renamed[old]}:")
            config[self.renamed[old]] = config.pop(old)
        return argv, self.typed(config, path)


class DataclassParser(_Conventions, argparse.ArgumentParser):
    """A `TrlParser` for dataclasses of plain types (str, int, float, bool, their optional forms, lists of them),
    light enough for instant `--help`. `parse_args_and_config(argv)` returns one instance per dataclass."""

    def __init__(self, dataclass_types, renamed: dict[str, str] | None = None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        kwargs.setdefault("epilog", CONFIG_HELP)
        super().__init__(**kwargs)
        self.dataclass_types = list(dataclass_types)
        self.renamed = dict(renamed or {})
        for cls in self.dataclass_types:
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.init:
                    self._add_field(f, hints[f.name])

    def _add_field(self, f: dataclasses.Field, kind) -> None:
        if f.metadata.get("positional"):  # e.g. the PATH of `trl-sso push PATH`
            self.add_argument(f.name, nargs="?", default=None, help=f.metadata.get("help"))
            return
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        names += list(f.metadata.get("aliases", ()))
        options = {key: value for key, value in f.metadata.items() if key in ("help", "choices")}
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
        if optional:
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if f.default is not dataclasses.MISSING:
            options["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            options["default"] = f.default_factory()
        else:
            options["required"] = True
        if kind is bool:
            options.update(type=string_to_bool, nargs="?", const=True, metavar="{true,false}")
        elif typing.get_origin(kind) is list and f.metadata.get("repeatable"):  # `--flag a --flag b` adds up
            options.update(type=typing.get_args(kind)[0], nargs="+", action="extend", default=None)
        elif typing.get_origin(kind) is list:
            options.update(type=typing.get_args(kind)[0], nargs="+")
        elif kind is dict:  # a JSON object, read by the dataclass (e.g. `generation_kwargs`)
            options["type"] = str
        elif typing.get_origin(kind) is typing.Literal:
            options.update(choices=list(typing.get_args(kind)), type=type(typing.get_args(kind)[0]))
        else:
            options["type"] = kind
        self.add_argument(*names, **options)
        if kind is bool and f.default is True:
            self.add_argument(
                f"--no_{f.name}",
                f"--no-{f.name.replace('_', '-')}",
                action="store_false",
                dest=f.name,
                help=f"Turn `--{f.name}` off.",
            )

    def parse_args_and_config(self, args=None) -> tuple:
        argv, config = self.read_config(self.rename_deprecated(list(sys.argv[1:] if args is None else args)))
        known = {action.dest for action in self._actions}
        unknown = sorted(set(config) - known)
        if unknown:
            self.error(f"argument --config: unknown option(s) {unknown}; remove them or check their spelling")
        for action in self._actions:
            if action.dest in config:
                action.default, action.required = config[action.dest], False
        namespace = vars(self.parse_args(argv))
        missing = [name for name, value in namespace.items() if value is None and self._is_required_positional(name)]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return tuple(
            cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.init})
            for cls in self.dataclass_types
        )

    def _is_required_positional(self, name: str) -> bool:
        return any(
            f.name == name and f.metadata.get("positional") and f.default is dataclasses.MISSING
            for cls in self.dataclass_types
            for f in dataclasses.fields(cls)
        )


# What trl-sso's options say in their metadata besides argparse's keys (`trl_sso.generation.arguments`)
OWN_METADATA = ("range", "affects_data", "sampling_kwarg", "deprecated_for")


def trl_parser(dataclass_types, renamed: dict[str, str] | None = None, **kwargs):
    """TRL's `TrlParser` over `dataclass_types`, with trl-sso's one-line errors and renamed flags."""
    from trl import TrlParser

    class Parser(_Conventions, TrlParser):
        @staticmethod
        def _parse_dataclass_field(parser, field):
            """transformers hands a field's metadata to argparse: keep to the keys argparse knows, leaving out
            trl-sso's own (`trl_sso.generation.arguments`: range, affects_data, ...)."""
            field = copy.copy(field)
            field.metadata = types.MappingProxyType(
                {key: value for key, value in field.metadata.items() if key not in OWN_METADATA}
            )
            return TrlParser._parse_dataclass_field(parser, field)

        def parse_args_and_config(self, args=None, **options):
            argv = self.rename_deprecated(list(sys.argv[1:] if args is None else args))
            index = argv.index("--config") if "--config" in argv else None
            self.config_source = argv[index + 1] if index is not None and index + 1 < len(argv) else "the config"
            try:
                return super().parse_args_and_config(args=argv, **options)
            except ValueError as error:  # transformers' and TRL's words for options that no dataclass knows
                if "Unknown arguments from config file" in str(error):
                    names = re.findall(r"'--([\w-]+)'", str(error))
                    owners = [
                        f"`{name}` belongs to `trl-sso {self.foreign[name]}`" for name in names if name in self.foreign
                    ]
                    where = f" ({'; '.join(owners)})" if owners else ""
                    self.error(
                        f"argument --config: unknown option(s) {names}{where}; remove them or check their spelling"
                    )
                if "not used by the HfArgumentParser" not in str(error):
                    raise
                flags = argv[:index] + argv[index + 2 :] if index is not None else argv
                self.error(f"unrecognized arguments: {' '.join(self.parse_known_args(flags)[1])}")

        def set_defaults_with_config(self, **kwargs):
            return super().set_defaults_with_config(**self.typed(kwargs, self.config_source))

    parser = Parser(dataclass_types, epilog=CONFIG_HELP, **kwargs)
    parser.renamed = dict(renamed or {})
    return parser

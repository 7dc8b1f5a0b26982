"""`--accelerate_config NAME_OR_FILE`: a training command launched through `accelerate launch`, as
`trl dpo --accelerate_config zero3` launches TRL's. A file is used as it is; a name is one of TRL's shipped configs
(`zero1`, `zero2`, `zero3`, `fsdp1`, `fsdp2`, `multi_gpu`, `single_gpu`), resolved by TRL. The command then runs as
`accelerate launch --config_file FILE -m trl_sso.cli.main COMMAND ...` with the other flags unchanged.
"""

import os
import subprocess

import yaml


FLAG = "--accelerate_config"
HELP = (
    "Launch through `accelerate launch` with `--accelerate_config NAME_OR_FILE`: an accelerate config file, or a name "
    "of TRL's shipped configs (zero1, zero2, zero3, fsdp1, fsdp2, multi_gpu, single_gpu), as `trl dpo` takes it."
)


def take_accelerate_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """The value of `--accelerate_config` in `argv` (also `--accelerate-config`, `--accelerate_config=VALUE`) and
    `argv` without it.

    >>> take_accelerate_config(["--max_steps", "3", "--accelerate_config", "zero3", "--bf16"])
    ('zero3', ['--max_steps', '3', '--bf16'])
    >>> take_accelerate_config(["--accelerate-config=my.yaml"])
    ('my.yaml', [])
    """
    rest, value, index = [], None, 0
    while index < len(argv):
        flag, sep, inline = argv[index].partition("=")
        if flag.replace("-", "_") == FLAG.replace("-", "_"):
            if sep:
                value = inline
            elif index + 1 < len(argv):
                value, index = argv[index + 1], index + 1
            else:
                raise ValueError(f"`{FLAG}` needs a value: a config file or one of TRL's names, such as zero3.")
        else:
            rest.append(argv[index])
        index += 1
    return value, rest


def check_config_file(path: str) -> None:
    """Refuse an accelerate config file that is not a YAML mapping, in one line naming the file and where the YAML
    error is (accelerate would fail with a long stack trace)."""
    try:
        with open(path) as f:
            content = yaml.safe_load(f)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(
            f"The accelerate config {path} is not valid YAML ({problem}{where}). Fix the file, or pass one of TRL's "
            "config names (zero3, fsdp2, multi_gpu, ...)."
        ) from None
    if not isinstance(content, dict):
        raise ValueError(
            f"The accelerate config {path} holds no settings (a YAML mapping such as `distributed_type: MULTI_GPU`). "
            "Write one with `accelerate config --config_file FILE`, or pass one of TRL's config names."
        )


def launch(command: str, config: str, argv: list[str]) -> int:
    """Run `trl-sso COMMAND argv` under `accelerate launch` with `config`; returns the launch's exit code."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    if os.path.isfile(config):
        check_config_file(config)
    launch_args = resolve_accelerate_config_argument([FLAG, config])  # a file, or TRL's config of that name
    args = launch_command_parser().parse_args([*launch_args, "--module", "trl_sso.cli.main", command, *argv])
    try:
        launch_command(args)
    except subprocess.CalledProcessError as error:
        return error.returncode
    return 0

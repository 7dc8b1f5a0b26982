"""`trl-sso`: Self-Steering Optimization from the command line.

    trl-sso generate --output_dir sso-data --num_prompts 4 --max_completion_length 16
    trl-sso train --model_name_or_path MODEL --dataset_name sso-data --output_dir sso-model [--use_peft]
    trl-sso reward --model_name_or_path MODEL --dataset_name sso-data --output_dir sso-rm
    trl-sso push PATH --repo_id NAMESPACE/NAME
    trl-sso iterate --config recipes/quickstart_cpu.yaml
    trl-sso online --config recipes/online_cpu.yaml
    trl-sso pipeline --config recipes/v2_generator_llama3_8b.yaml
    trl-sso inspect sso-data [--model MODEL] [--reward_model RM]
    trl-sso evaluate --model BEFORE --model AFTER
    trl-sso calibrate [--model MODEL] [--features verifiable]

Every command takes `--config recipe.yaml` and `--help`. This module imports nothing heavy.
"""

import argparse
import sys

from .. import __version__
from .table import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the command name, and its own options passed on untouched."""
    parser = argparse.ArgumentParser(
        prog="trl-sso",
        description="Self-Steering Optimization (SSO) for TRL.",
        epilog="Run `trl-sso COMMAND --help` for the options of a command.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"trl-sso {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        commands.add_parser(name, help=command.summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        from .commands import run

        return run(argv[0], argv[1:])
    build_parser().parse_args(argv)  # prints the help, or the usage and an error for an unknown command
    return 2


if __name__ == "__main__":
    sys.exit(main())

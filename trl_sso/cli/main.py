"""`trl-sso`: Self-Steering Optimization from the command line.

    trl-sso generate --output_dir sso-data --num_prompts 4 --max_new_tokens 16
    trl-sso train --model_name_or_path MODEL --dataset_name sso-data --output_dir sso-model [--use_peft]
    trl-sso reward --model_name_or_path MODEL --dataset_name sso-data --output_dir sso-rm
    trl-sso push PATH --repo_id NAMESPACE/NAME
    trl-sso iterate --config recipes/quickstart_cpu.yaml
    trl-sso pipeline --config recipes/v2_generator_llama3_8b.yaml
    trl-sso inspect sso-data [--model MODEL] [--reward_model RM]
    trl-sso evaluate --model BEFORE --model AFTER
    trl-sso calibrate [--model MODEL] [--features verifiable]

Every command takes `--config recipe.yaml` and `--help`. This module imports nothing heavy.
"""

import argparse
import sys


COMMANDS = {
    "generate": "Sample an on-policy SSO dataset (y+, y-, y_o) from a policy.",
    "train": "Train a policy or a data generator with SSO (full, LoRA or QLoRA).",
    "reward": "Train a reward model on the preference pairs of an SSO dataset.",
    "iterate": "Online SSO (paper v1): generate with the current policy, train, repeat for T rounds.",
    "pipeline": "The generator pipeline (paper v2): train a generator, write pairs, DPO the policy.",
    "push": "Publish a generated dataset, an SSO model or adapter, or a reward model, with its card.",
    "inspect": "Signal report of an SSO dataset: accuracy, on-policyness, length drift, degeneracy.",
    "evaluate": "Score how policies answer held-out prompts without a principle, to compare rounds.",
    "calibrate": "Check which principles a model follows, and in which placement, before a long job.",
    "env": "Print the versions of trl-sso and its libraries, and the accelerator, for a bug report.",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the command name, and its own options passed on untouched."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="trl-sso",
        description="Self-Steering Optimization (SSO) for TRL.",
        epilog="Run `trl-sso COMMAND --help` for the options of a command.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"trl-sso {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
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

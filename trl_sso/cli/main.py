"""`trl-sso`: Self-Steering Optimization from the command line.

    trl-sso generate --output_dir sso-data --num_prompts 4 --max_new_tokens 16
"""

import argparse
import sys


def _generate(namespace) -> int:
    from ..generation import GenerateArguments, generate
    from .options import to_dataclass

    args = to_dataclass(GenerateArguments, namespace)
    result = generate(args)
    if result is not None:
        dataset, summary = result
        dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items() if v) or "none"
        print(
            f"Wrote {summary['num_records']} SSO records from {summary['num_prompts']} prompts to "
            f"{args.output_dir}/dataset (dropped: {dropped}; principle fallbacks: {summary['principle_fallbacks']}). "
            f"Mean tokens chosen/rejected/original: "
            + "/".join(f"{summary['mean_tokens'][s]:.1f}" for s in ("chosen", "rejected", "original"))
            + f". Summary: {args.output_dir}/summary.json"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..generation.arguments import GenerateArguments
    from .options import add_dataclass_options

    parser = argparse.ArgumentParser(prog="trl-sso", description="Self-Steering Optimization (SSO) for TRL.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate = commands.add_parser(
        "generate", help="Sample an on-policy SSO dataset (y+, y-, y_o) from a policy.",
        description="Sample an on-policy SSO preference dataset from a policy and a prompt set. Resumable: rerun the "
        "same command to continue an interrupted run.",
    )
    add_dataclass_options(generate, GenerateArguments)
    generate.set_defaults(handler=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    namespace = parser.parse_args(argv)
    try:
        return namespace.handler(namespace)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, ImportError) as error:
        # Bad options and inputs: the message says what to fix; a stack trace would only hide it
        print(f"trl-sso {namespace.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

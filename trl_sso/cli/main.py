"""`trl-sso`: Self-Steering Optimization from the command line.

    trl-sso generate --output_dir sso-data --num_prompts 4 --max_new_tokens 16
    trl-sso train --model_name_or_path MODEL --dataset_name sso-data --output_dir sso-model [--use_peft]
    trl-sso reward --model_name_or_path MODEL --dataset_name sso-data --output_dir sso-rm
    trl-sso push PATH --repo_id NAMESPACE/NAME
    trl-sso iterate --config recipes/quickstart_cpu.yaml
    trl-sso pipeline --config recipes/v2_generator_llama3_8b.yaml
"""

import argparse
import sys


def _generate(namespace) -> int:
    from ..generation import GenerateArguments, generate
    from .options import to_dataclass

    args = to_dataclass(GenerateArguments, namespace)
    dataset, summary = generate(args)
    from accelerate import PartialState

    if PartialState().is_main_process:
        dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items() if v) or "none"
        print(
            f"Wrote {summary['num_records']} SSO records from {summary['num_prompts']} prompts to "
            f"{args.output_dir}/dataset (dropped: {dropped}; principle fallbacks: {summary['principle_fallbacks']}). "
            f"Mean tokens chosen/rejected/original: "
            + "/".join(f"{summary['mean_tokens'][s]:.1f}" for s in ("chosen", "rejected", "original"))
            + f". Summary: {args.output_dir}/summary.json"
        )
    return 0


def _push(namespace) -> int:
    from ..hub import push

    url = push(namespace.path, namespace.repo_id, config_name=namespace.config_name, private=namespace.private,
               revision=namespace.revision, commit_message=namespace.commit_message)
    print(f"Published {namespace.path} to {url}")
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

    push = commands.add_parser(
        "push", help="Publish a generated dataset, an SSO model or adapter, or a reward model, with its card.",
        description="Publish PATH to the Hub with the right card: a generated dataset (as config iteration_<t>), an "
        "SSO-trained model, a LoRA/QLoRA adapter, or a reward model. The token comes from `hf auth login` or HF_TOKEN.",
    )
    push.add_argument("path", help="Folder to publish (what it holds is detected).")
    push.add_argument("--repo_id", required=True, help="Target repo, namespace/name.")
    push.add_argument("--config_name", help="Dataset config name (default: iteration_<t> from the dataset's summary).")
    push.add_argument("--private", action="store_true", help="Create the repo as private.")
    push.add_argument("--revision", help="Branch to push to (created when missing), e.g. iteration_2.")
    push.add_argument("--commit_message", help="Commit message.")
    push.set_defaults(handler=_push)
    for name, (_, help_text) in TRL_COMMANDS.items():
        commands.add_parser(name, help=help_text + f" See `trl-sso {name} --help`.", add_help=False)
    return parser


# Commands parsed by TRL's own parser (all training flags, `--config recipe.yaml`): dispatched before argparse
TRL_COMMANDS = {
    "train": ("train_main", "Train a policy or a data generator with SSO (full, LoRA or QLoRA)."),
    "reward": ("reward_main", "Train a reward model on the preference pairs of an SSO dataset."),
    "iterate": ("iterate_main", "Online SSO (paper v1): generate with the current policy, train, repeat for T rounds."),
    "pipeline": ("pipeline_main", "The generator pipeline (paper v2): train a generator, write pairs, DPO the policy."),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in TRL_COMMANDS:
        from . import train

        command = argv[0]
        handler = getattr(train, TRL_COMMANDS[command][0])
        return _run(command, lambda: handler(argv[1:]))
    namespace = parser.parse_args(argv)
    return _run(namespace.command, lambda: namespace.handler(namespace))


def _run(command: str, action) -> int:
    from ..data import SSODataError
    from ..generation.generator import NoRecordsError
    from ..hub import HubPushError

    try:
        return action()
    except (ValueError, OSError, ImportError, HubPushError, NoRecordsError, SSODataError) as error:
        # Bad options and inputs: the message says what to fix; a stack trace would only hide it
        print(f"trl-sso {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `trl-sso` sub-commands: each parses its options (`parser(command)`) and calls its script in `trl_sso.scripts`.

Heavy libraries load inside the functions, and only `train`, `reward`, `iterate` and `pipeline` build TRL's parser,
so `trl-sso generate --help` and `trl-sso push --help` answer at once.
"""

import dataclasses
import sys

from ..hub_token import HUB_TOKEN_HELP
from ..logs import LoggingArguments, configure_logging
from .parser import DataclassParser, trl_parser


# `trl-sso generate` flags renamed in 0.1.1 to TRL's names: accepted with a deprecation warning until 0.2
GENERATE_RENAMED = {"model": "model_name_or_path", "hub_private": "hub_private_repo"}


@dataclasses.dataclass
class PushArguments:
    """Options of `trl-sso push`."""

    path: str = dataclasses.field(
        metadata={"help": "Folder to publish (what it holds is detected).", "positional": True}
    )
    repo_id: str = dataclasses.field(metadata={"help": "Target repo, namespace/name."})
    config_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Dataset config name (default: iteration_<t> from the dataset's summary)."}
    )
    private: bool = dataclasses.field(default=False, metadata={"help": "Create the repo as private."})
    revision: str | None = dataclasses.field(
        default=None, metadata={"help": "Branch to push to (created when missing), e.g. iteration_2."}
    )
    commit_message: str | None = dataclasses.field(default=None, metadata={"help": "Commit message."})
    hub_token: str | None = dataclasses.field(default=None, metadata={"help": HUB_TOKEN_HELP})


DESCRIPTIONS = {
    "generate": "Sample an on-policy SSO preference dataset (y+, y-, y_o) from a policy and a prompt set. Resumable: "
    "rerun the same command to continue an interrupted run.",
    "train": "Train a policy (or a data generator) with Self-Steering Optimization (full, LoRA or QLoRA).",
    "reward": "Train a reward model on the preference pairs of an SSO dataset.",
    "iterate": "Online SSO (paper v1): generate with the current policy, train, repeat for T rounds.",
    "pipeline": "The SSO generator pipeline (paper v2): train a data generator, let it write pairs, then train the "
    "policy with DPO.",
    "push": "Publish a generated dataset (as config iteration_<t>), an SSO model, a LoRA/QLoRA adapter or a reward "
    "model to the Hub, with its card. The token comes from `--hub_token`, `hf auth login` or HF_TOKEN.",
    "inspect": "The signal report of an SSO dataset: accuracy on verifiable features, on-policyness A(x, y) under a "
    "policy, length drift, degeneracy and, with a reward model, its verdicts. Writes signal.json and PNG plots.",
    "evaluate": "Let policies answer held-out prompts with no principle and score the answers on the verifiable "
    "features (and a reward model): the table says whether a round of SSO moved the policy.",
    "calibrate": "Check which principles a model follows and where: for each verifiable feature and placement of the "
    "principle, how often answers follow the good side and break it under the bad side, and how often y+ beats y-, "
    "with 95% intervals. Writes calibration.json and calibration.png and names the placement to generate with.",
    "env": "Print the versions of trl-sso and the libraries it runs on, and the accelerator: paste them into a bug "
    "report.",
}


def parser(command: str):
    """The parser of `trl-sso COMMAND`; `parser(command).parse_args_and_config(argv)` gives its dataclasses."""
    prog, description = f"trl-sso {command}", DESCRIPTIONS[command]
    if command == "generate":
        from ..generation.arguments import GenerateArguments
        from ..scripts.generate import PublishArguments

        return DataclassParser(
            (GenerateArguments, PublishArguments, LoggingArguments),
            renamed=GENERATE_RENAMED,
            prog=prog,
            description=description,
        )
    if command == "push":
        return DataclassParser((PushArguments, LoggingArguments), prog=prog, description=description)
    if command == "env":
        return DataclassParser((), prog=prog, description=description)
    if command == "inspect":
        from ..scripts.inspect import InspectArguments

        return DataclassParser((InspectArguments, LoggingArguments), prog=prog, description=description)
    if command == "evaluate":
        from ..scripts.evaluate import EvaluateArguments

        return DataclassParser((EvaluateArguments, LoggingArguments), prog=prog, description=description)
    if command == "calibrate":
        from ..scripts.calibrate import CalibrateArguments

        return DataclassParser((CalibrateArguments, LoggingArguments), prog=prog, description=description)

    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments

    from ..config import SSOConfig

    if command == "train":
        types = (ScriptArguments, SSOConfig, ModelConfig, DatasetMixtureConfig)
    elif command == "reward":
        from ..scripts.reward import RewardScriptArguments, SSORewardConfig

        types = (ScriptArguments, RewardScriptArguments, SSORewardConfig, ModelConfig)
    else:
        from ..generation.arguments import GenerationOptions
        from ..scripts.stages import IterateArguments, PipelineArguments

        arguments, sibling = (IterateArguments, PipelineArguments)
        if command == "pipeline":
            arguments, sibling = sibling, arguments
        types = (arguments, GenerationOptions, SSOConfig, ModelConfig)
        parser = trl_parser(types, prog=prog, description=description)
        own = {f.name for f in dataclasses.fields(arguments)}
        other = "pipeline" if command == "iterate" else "iterate"
        parser.foreign = {f.name: other for f in dataclasses.fields(sibling) if f.name not in own}
        return parser
    return trl_parser(types, prog=prog, description=description)


# Options that name a model: a local folder or a Hub id
MODEL_OPTIONS = ("model_name_or_path", "principle_model", "reward_model")


def check_model_references(parsed: tuple) -> None:
    """A model option that names neither an existing folder nor a possible Hub id (`namespace/name`) is a missing
    path: say so, rather than let the Hub client reject it as a malformed repo id."""
    import os

    from ..cards import hub_id

    for arguments in parsed:
        for option in MODEL_OPTIONS:
            values = getattr(arguments, option, None)
            for value in [values] if isinstance(values, str) else values or []:
                if not os.path.exists(value) and hub_id(value) is None:
                    raise ValueError(
                        f"`--{option} {value}`: no such folder, and not a Hub model id (`name` or `namespace/name`). "
                        "Check the path."
                    )


def check_output_dir(path: str) -> None:
    """The output folder can be written: it is a folder (or can be made one) in a writable place. Checked before any
    model loads, so that a run does not fail at its first save."""
    import os

    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`--output_dir {path}` is a file, not a folder. Choose another path or remove the file.")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"`--output_dir {path}` cannot be created: {existing} is a file, not a folder. Choose another path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"`--output_dir {path}` cannot be written: {existing} is read-only (permissions, an immutable folder or "
            "a read-only file system). Choose a writable `--output_dir`."
        )


def parse(command: str, argv: list[str]) -> tuple:
    """The parsed options of `trl-sso COMMAND argv`, with trl-sso's logging configured from them (`--log_level`),
    every value checked against its rule (`trl_sso.options.check_ranges`), the model options checked
    (`check_model_references`) and the output folder checked (`check_output_dir`): all before any model loads."""
    from ..options import check_ranges

    parsed = parser(command).parse_args_and_config(args=argv)
    levels = [(p.log_level, getattr(p, "log_level_replica", None)) for p in parsed if hasattr(p, "log_level")]
    configure_logging(*(levels[0] if levels else (None, None)))
    for arguments in parsed:
        check_ranges(arguments)
    check_model_references(parsed)
    for arguments in parsed:
        if getattr(arguments, "output_dir", None):
            check_output_dir(arguments.output_dir)
    return tuple(p for p in parsed if not isinstance(p, LoggingArguments))


def generate(argv: list[str]) -> int:
    from ..data import RESPONSE_COLUMNS
    from ..scripts.generate import generate_dataset

    gen_args, publish_args = parse("generate", argv)
    _, summary, url = generate_dataset(gen_args, publish_args)
    from ..runtime import process_state

    if process_state().is_main_process:
        dropped = ", ".join(f"{k} {v}" for k, v in summary["dropped"].items() if v) or "none"
        lengths = "/".join(f"{summary['mean_tokens'][s]:.1f}" for s in RESPONSE_COLUMNS)
        print(
            f"Wrote {summary['num_records']} SSO records from {summary['num_prompts']} prompts to "
            f"{gen_args.output_dir} (dropped: {dropped}; principle fallbacks: "
            f"{summary['principle_fallbacks']}). Mean tokens chosen/rejected/original: {lengths}. Load it with "
            f"`datasets.load_dataset({gen_args.output_dir!r})`; summary: {gen_args.output_dir}/summary.json"
        )
        if summary["signal"].get("judge"):
            from ..signal.judge import format_judge

            print(format_judge(summary["signal"]["judge"]))
        if url:
            print(f"Published the dataset to {url} (config iteration_{gen_args.iteration}).")
    return 0


# The script function each training command runs: (module of `trl_sso.scripts`, function)
SCRIPTS = {
    "train": ("train", "train_sso"),
    "reward": ("reward", "train_reward"),
    "iterate": ("iterate", "iterate"),
    "pipeline": ("pipeline", "pipeline"),
}


def run_script(command: str, argv: list[str]) -> int:
    """Parse the options of a training command and call its script function with the parsed dataclasses."""
    from importlib import import_module

    module, function = SCRIPTS[command]
    script = getattr(import_module(f"trl_sso.scripts.{module}"), function)
    script(*parse(command, argv))
    from accelerate import PartialState

    PartialState().destroy_process_group()  # as `trainer.end()` ends TRL's scripts (the trackers end with training)
    return 0


def push(argv: list[str]) -> int:
    from ..hub import push as publish

    (args,) = parse("push", argv)
    url = publish(
        args.path,
        args.repo_id,
        config_name=args.config_name,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        token=args.hub_token,
    )
    print(f"Published {args.path} to {url}")
    return 0


def inspect(argv: list[str]) -> int:
    from ..scripts.inspect import inspect_dataset
    from ..signal.report import format_report

    (args,) = parse("inspect", argv)
    report = inspect_dataset(args)
    print(format_report(report, f"Signal report of {report['dataset']}"))
    print(f"Wrote {args.output_dir}/signal.json and the plots.")
    return 0


def evaluate(argv: list[str]) -> int:
    from ..scripts.evaluate import evaluate_models, format_evaluation

    (args,) = parse("evaluate", argv)
    print(format_evaluation(evaluate_models(args)))
    print(f"Wrote {args.output_dir}/evaluation.json and evaluation.png.")
    return 0


def calibrate(argv: list[str]) -> int:
    from ..scripts.calibrate import calibrate as check_principles
    from ..scripts.calibrate import format_calibration

    (args,) = parse("calibrate", argv)
    print(format_calibration(check_principles(args)))
    print(f"Wrote {args.output_dir}/calibration.json and calibration.png.")
    return 0


def env(argv: list[str]) -> int:
    from ..scripts.env import environment

    parse("env", argv)
    print("Copy-paste the following information when reporting an issue:\n")
    print("\n".join(f"- {key}: {value}" for key, value in environment().items()))
    return 0


DISK_FULL = (
    "the disk is full{where}. Free some space or choose an `--output_dir` on another disk, then run the same command "
    "again: the unfinished files were removed, and it continues from the last finished step."
)


def explain_os_error(error: OSError) -> str:
    """One sentence for an error of the file system, naming the path and the fix."""
    import errno

    path = error.filename or "a file"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"{path} cannot be written ({error.strerror}): the folder is read-only (permissions, an immutable folder "
            "or a read-only file system). Choose a writable folder, e.g. another `--output_dir`."
        )
    if error.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return (
            f"{path} is in the way ({error.strerror}): a file stands where a folder is needed, or the other way "
            "round. Remove it or choose another `--output_dir`."
        )
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DISK_FULL.format(where=f" while writing {path}")
    return str(error)


def run(command: str, argv: list[str]) -> int:
    """Run `trl-sso COMMAND argv`; bad options and inputs, and errors of the file system, end in one line on stderr
    and exit code 2."""
    from ..data import SSODataError
    from ..generation.generator import NoRecordsError
    from ..retries import HubError

    try:
        if command in SCRIPTS:
            return run_script(command, argv)
        handlers = {
            "generate": generate,
            "push": push,
            "inspect": inspect,
            "evaluate": evaluate,
            "calibrate": calibrate,
            "env": env,
        }
        return handlers[command](argv)
    except (ValueError, OSError, ImportError, HubError, NoRecordsError, SSODataError) as error:
        # Bad options and inputs: the message says what to fix; a stack trace would only hide it
        message = explain_os_error(error) if isinstance(error, OSError) and error.errno else error
        print(f"trl-sso {command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as error:
        # safetensors reports a full disk as its own error type, with the OS error in its text
        if type(error).__name__ == "SafetensorError" and ("No space left" in str(error) or "code: 28" in str(error)):
            print(f"trl-sso {command}: error: {DISK_FULL.format(where=' while saving a model')}", file=sys.stderr)
            return 2
        raise

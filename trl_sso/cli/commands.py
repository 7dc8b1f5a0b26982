"""Running a `trl-sso` command of the table (`trl_sso.cli.table.COMMANDS`): its parser, the checks every command's
options pass before any model loads, the output folder's lock, and one-line errors. Each command's function lives in
its own module of `trl_sso.scripts` (`main` for the light commands), which the table names.

Heavy libraries load inside the functions, and only `train`, `reward`, `online`, `iterate` and `pipeline` build
TRL's parser, so `trl-sso generate --help` and `trl-sso push --help` answer at once.
"""

import contextlib
import dataclasses
import errno
import os
import sys

from ..data import SSODataError
from ..files import output_lock
from ..generation.generator import NoRecordsError
from ..logs import LoggingArguments, configure_logging
from ..names import hub_id
from ..options import check_ranges, check_requirements
from ..quiet import quiet_known_noise
from ..retries import HubError
from .launch import HELP as ACCELERATE_HELP
from .launch import launch, take_accelerate_config
from .parser import DataclassParser, trl_parser
from .table import COMMANDS, load


def parser(command: str):
    """The parser of `trl-sso COMMAND`; `parser(command).parse_args_and_config(argv)` gives its dataclasses."""
    entry = COMMANDS[command]
    prog, types = f"trl-sso {command}", tuple(load(name) for name in entry.arguments)
    if not entry.trl_parser:
        logging_options = (LoggingArguments,) if types else ()
        return DataclassParser(
            (*types, *logging_options), renamed=dict(entry.renamed), prog=prog, description=entry.description
        )
    parser = trl_parser(
        types, renamed=dict(entry.renamed), prog=prog, description=f"{entry.description} {ACCELERATE_HELP}"
    )
    if entry.sibling:  # the sibling's own options are refused with a pointer to it
        own = {f.name for f in dataclasses.fields(types[0])}
        sibling = load(COMMANDS[entry.sibling].arguments[0])
        parser.foreign = {f.name: entry.sibling for f in dataclasses.fields(sibling) if f.name not in own}
    return parser


# Options that name a model: a local folder or a Hub id
MODEL_OPTIONS = ("model_name_or_path", "principle_model", "reward_model")


def check_model_references(parsed: tuple) -> None:
    """A model option that names neither an existing folder nor a possible Hub id (`namespace/name`) is a missing
    path: say so, rather than let the Hub client reject it as a malformed repo id."""
    for arguments in parsed:
        for option in MODEL_OPTIONS:
            values = getattr(arguments, option, None)
            for value in [values] if isinstance(values, str) else values or []:
                if not os.path.exists(value) and hub_id(value) is None:
                    raise ValueError(
                        f"`--{option} {value}`: no such folder, and not a Hub model id (`name` or `namespace/name`). "
                        "Check the path."
                    )


def check_placements(parsed: tuple) -> None:
    """`--principle_placement` (where generation puts the principle, recorded in each record, which training follows)
    and `--sso_principle_placement` (what training assumes for data without that record) in one command must agree:
    found now, not after the generation stage has run."""
    sampled = next((p.principle_placement for p in parsed if hasattr(p, "principle_placement")), None)
    trained = next((p.sso_principle_placement for p in parsed if hasattr(p, "sso_principle_placement")), None)
    if sampled is not None and trained is not None and sampled != trained:
        raise ValueError(
            f"`--principle_placement {sampled}` (where the generated records put the principle) and "
            f"`--sso_principle_placement {trained}` (what training assumes for records without one) disagree; the "
            "generated records carry theirs, so leave `--sso_principle_placement` out."
        )


def check_output_dir(path: str) -> None:
    """The output folder can be written: it is a folder (or can be made one) in a writable place. Checked before any
    model loads, so that a run does not fail at its first save."""
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
    (`check_model_references`), the two placements checked against each other (`check_placements`) and the output
    folder checked (`check_output_dir`): all before any model loads."""
    parsed = parser(command).parse_args_and_config(args=argv)
    levels = [(p.log_level, getattr(p, "log_level_replica", None)) for p in parsed if hasattr(p, "log_level")]
    configure_logging(*(levels[0] if levels else (None, None)))
    for arguments in parsed:
        check_ranges(arguments)
        check_requirements(arguments)
    check_model_references(parsed)
    check_placements(parsed)
    for arguments in parsed:
        if getattr(arguments, "output_dir", None):
            check_output_dir(arguments.output_dir)
    return tuple(p for p in parsed if not isinstance(p, LoggingArguments))


DISK_FULL = (
    "the disk is full{where}. Free some space or choose an `--output_dir` on another disk, then run the same command "
    "again: the unfinished files were removed, and it continues from the last finished step."
)


def explain_os_error(error: OSError) -> str:
    """One sentence for an error of the file system, naming the path and the fix."""
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


# Commands whose runs write an output folder that a second run at the same time would write too
LOCKED = ("generate", "train", "online", "iterate", "pipeline")


def _output_lock(command: str, parsed: tuple):
    """The lock of the output folder of a `LOCKED` command (`trl_sso.files.output_lock`), taken by the main process of
    a launch (the others write there under its lead); a null context for the other commands."""
    folders = [p.output_dir for p in parsed if getattr(p, "output_dir", None)]
    if command not in LOCKED or not folders or int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return output_lock(folders[0], command)


def run(command: str, argv: list[str]) -> int:
    """Run `trl-sso COMMAND argv`; bad options and inputs, and errors of the file system, end in one line on stderr
    and exit code 2."""
    try:
        entry = COMMANDS[command]
        quiet_known_noise(training=entry.trl_parser)
        if entry.trl_parser:
            config, argv = take_accelerate_config(argv)
            if config is not None:
                return launch(command, config, argv)
        parsed = parse(command, argv)
        with _output_lock(command, parsed):
            result = load(entry.runner)(*parsed)
        if entry.trl_parser:  # a training script: its result is a report, not an exit code
            from accelerate import PartialState

            PartialState().destroy_process_group()  # as `trainer.end()` ends TRL's scripts
            return 0
        return result or 0
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

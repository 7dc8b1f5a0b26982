"""The `trl-sso` commands, one entry each: its summary, its description, the dataclasses of its options and the
function that runs it. Adding a command is one entry here plus its module in `trl_sso.scripts`.

Light: the argument types and runners are named as `"module:attribute"` strings and imported only when the command
runs, so that `trl-sso --help` imports nothing heavy.
"""

from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Command:
    """One `trl-sso` command.

    - `summary`: its line in `trl-sso --help`; `description`: the text of `trl-sso COMMAND --help`.
    - `arguments`: its option dataclasses, parsed in this order and passed to `runner` in it.
    - `runner`: called with the parsed dataclasses; a light command's runner returns the exit code (`None`: 0), a
      training script's result is its report and the command exits with 0.
    - `trl_parser`: parsed by TRL's `TrlParser` (the training commands, with `SSOConfig` and `ModelConfig`), which
      ends the process group after the run as TRL's scripts do; otherwise by trl-sso's light parser.
    - `sibling`: the command whose own options this one refuses with a pointer to it (`iterate` and `pipeline`).
    - `renamed`: old flag names accepted with a deprecation warning, and their new names.
    """

    summary: str
    description: str
    arguments: tuple[str, ...]
    runner: str
    trl_parser: bool = False
    sibling: str | None = None
    renamed: tuple[tuple[str, str], ...] = ()


_TRAINING = ("trl:ScriptArguments", "trl_sso.config:SSOConfig", "trl:ModelConfig")
_ONLINE = ("trl_sso.generation.arguments:GenerationOptions", "trl_sso.config:SSOConfig", "trl:ModelConfig")

COMMANDS: dict[str, Command] = {
    "generate": Command(
        "Sample an on-policy SSO dataset (y+, y-, y_o) from a policy.",
        "Sample an on-policy SSO preference dataset (y+, y-, y_o) from a policy and a prompt set. Resumable: rerun "
        "the same command to continue an interrupted run.",
        ("trl_sso.generation.arguments:GenerateArguments", "trl_sso.scripts.generate:PublishArguments"),
        "trl_sso.scripts.generate:main",
        # flags renamed in 0.1.1 to TRL's names: accepted with a deprecation warning until 0.2
        renamed=(("model", "model_name_or_path"), ("hub_private", "hub_private_repo")),
    ),
    "train": Command(
        "Train a policy or a data generator with SSO (full, LoRA or QLoRA).",
        "Train a policy (or a data generator) with Self-Steering Optimization (full, LoRA or QLoRA).",
        (*_TRAINING, "trl:DatasetMixtureConfig"),
        "trl_sso.scripts.train:train_sso",
        trl_parser=True,
    ),
    "reward": Command(
        "Train a reward model on the preference pairs of an SSO dataset.",
        "Train a reward model on the preference pairs of an SSO dataset.",
        (
            "trl:ScriptArguments",
            "trl_sso.scripts.reward:RewardScriptArguments",
            "trl_sso.scripts.reward:SSORewardConfig",
            "trl:ModelConfig",
        ),
        "trl_sso.scripts.reward:train_reward",
        trl_parser=True,
    ),
    "online": Command(
        "Online SSO: sample y+, y-, y_o from the current policy during training (OnlineSSOTrainer).",
        "Online SSO: the policy samples y+, y- and y_o for its prompts during training, every "
        "`steps_per_generation` micro-steps, and trains on them with the SSO loss (OnlineSSOTrainer). Prompts from "
        "`--dataset_name` (default: the packaged 200), policy from `--model_name_or_path` (default: the packaged "
        "SmolLM2-135M-Instruct).",
        ("trl:ScriptArguments", "trl_sso.online_config:OnlineSSOConfig", "trl:ModelConfig"),
        "trl_sso.scripts.online:train_online",
        trl_parser=True,
    ),
    "iterate": Command(
        "Online SSO (paper v1): generate with the current policy, train, repeat for T rounds.",
        "Online SSO (paper v1): generate with the current policy, train, repeat for T rounds.",
        ("trl_sso.scripts.iterate:IterateArguments", *_ONLINE),
        "trl_sso.scripts.iterate:iterate",
        trl_parser=True,
        sibling="pipeline",
        renamed=(("eval_max_new_tokens", "eval_max_completion_length"),),  # TRL's name, since 0.1.1
    ),
    "pipeline": Command(
        "The generator pipeline (paper v2): train a generator, write pairs, DPO the policy.",
        "The SSO generator pipeline (paper v2): train a data generator, let it write pairs, then train the policy "
        "with DPO.",
        ("trl_sso.scripts.pipeline:PipelineArguments", *_ONLINE),
        "trl_sso.scripts.pipeline:pipeline",
        trl_parser=True,
        sibling="iterate",
    ),
    "push": Command(
        "Publish a generated dataset, an SSO model or adapter, or a reward model, with its card.",
        "Publish a generated dataset (as config iteration_<t>), an SSO model, a LoRA/QLoRA adapter or a reward model "
        "to the Hub, with its card. The token comes from `--hub_token`, `hf auth login` or HF_TOKEN.",
        ("trl_sso.scripts.push:PushArguments",),
        "trl_sso.scripts.push:main",
    ),
    "inspect": Command(
        "Signal report of an SSO dataset: accuracy, on-policyness, length drift, degeneracy.",
        "The signal report of an SSO dataset: accuracy on verifiable features, on-policyness A(x, y) under a policy, "
        "length drift, degeneracy and, with a reward model or a judge, their verdicts. Writes signal.json and PNG "
        "plots.",
        ("trl_sso.scripts.inspect:InspectArguments",),
        "trl_sso.scripts.inspect:main",
    ),
    "evaluate": Command(
        "Score how policies answer held-out prompts without a principle, to compare rounds.",
        "Let policies answer held-out prompts with no principle and score the answers on the verifiable features "
        "(and a reward model): the table says whether a round of SSO moved the policy.",
        ("trl_sso.scripts.evaluate:EvaluateArguments",),
        "trl_sso.scripts.evaluate:main",
        renamed=(("max_new_tokens", "max_completion_length"),),  # TRL's name, since 0.1.1
    ),
    "calibrate": Command(
        "Check which principles a model follows, and in which placement, before a long job.",
        "Check which principles a model follows and where: for each verifiable feature and placement of the "
        "principle, how often answers follow the good side and break it under the bad side, and how often y+ beats "
        "y-, with 95% intervals. Writes calibration.json and calibration.png and names the placement to generate "
        "with.",
        ("trl_sso.scripts.calibrate:CalibrateArguments",),
        "trl_sso.scripts.calibrate:main",
        renamed=(("max_new_tokens", "max_completion_length"),),  # TRL's name, since 0.1.1
    ),
    "env": Command(
        "Print the versions of trl-sso and its libraries, and the accelerator, for a bug report.",
        "Print the versions of trl-sso and the libraries it runs on, and the accelerator: paste them into a bug "
        "report.",
        (),
        "trl_sso.scripts.env:main",
    ),
}


def load(reference: str):
    """The object a `"module:attribute"` reference names."""
    module, attribute = reference.split(":")
    return getattr(import_module(module), attribute)

"""`trl-sso train` and `trl-sso reward`: TRL-style parsers (every dataclass field is a flag; `--config recipe.yaml`
works) that call `trl_sso.training.train_sso` and `trl_sso.reward.train_reward`."""


def train_main(argv: list[str]) -> int:
    from trl import ModelConfig, ScriptArguments, TrlParser

    from ..config import SSOConfig
    from ..training import train_sso

    parser = TrlParser((ScriptArguments, SSOConfig, ModelConfig), prog="trl-sso train",
                       description="Train a policy (or a data generator) with Self-Steering Optimization.")
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    train_sso(script_args, training_args, model_args)
    return 0


def reward_main(argv: list[str]) -> int:
    from trl import ModelConfig, ScriptArguments, TrlParser

    from ..reward import RewardScriptArguments, SSORewardConfig, train_reward

    parser = TrlParser((ScriptArguments, RewardScriptArguments, SSORewardConfig, ModelConfig), prog="trl-sso reward",
                       description="Train a reward model on the preference pairs of an SSO dataset.")
    script_args, reward_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    train_reward(script_args, reward_args, training_args, model_args)
    return 0


def _pipeline_parser(prog: str, description: str):
    from trl import ModelConfig, TrlParser

    from ..config import SSOConfig
    from ..pipelines import PipelineArguments, PipelineGenerationArguments

    return TrlParser((PipelineArguments, PipelineGenerationArguments, SSOConfig, ModelConfig), prog=prog,
                     description=description)


def iterate_main(argv: list[str]) -> int:
    from ..pipelines import iterate

    parser = _pipeline_parser("trl-sso iterate", "Online SSO (paper v1): generate with the current policy, train, repeat.")
    iterate(*parser.parse_args_and_config(args=argv))
    return 0


def pipeline_main(argv: list[str]) -> int:
    from ..pipelines import pipeline

    parser = _pipeline_parser("trl-sso pipeline", "The SSO generator pipeline (paper v2): train a data generator, let "
                              "it write pairs, then train the policy with DPO.")
    pipeline(*parser.parse_args_and_config(args=argv))
    return 0

"""`trl-sso online`: SSO with the triples sampled from the current policy during training (`OnlineSSOTrainer`), from
TRL's script, model and training arguments (`OnlineSSOConfig`), with checkpoint resume, saving, the card and
publishing as `trl-sso train` does them.

The prompts come from `--dataset_name` (a prompt file, a saved dataset folder or a Hub dataset with a `prompt`
column; `--dataset_train_split`), by default the 200 packaged prompts; the policy from `--model_name_or_path`, by
default the packaged SmolLM2-135M-Instruct, so that the command runs offline.
"""

from .common import ignore_bias_buffers, train_and_save
from .stages import starting_policy
from .train import finish_training


def train_online(script_args, training_args, model_args):
    """Train with `OnlineSSOTrainer`; returns the trainer."""
    from datasets import Dataset

    from ..generation.prompts import load_prompts
    from ..online_trainer import OnlineSSOTrainer

    policy, _ = starting_policy(model_args)
    prompts = load_prompts(script_args.dataset_name, "prompt", script_args.dataset_train_split)
    trainer, output = train_and_save(
        OnlineSSOTrainer,
        policy,
        model_args,
        training_args,
        before_train=ignore_bias_buffers if script_args.ignore_bias_buffers else None,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    finish_training(trainer, output, training_args, model_args, [script_args.dataset_name])
    return trainer

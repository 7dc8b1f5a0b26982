"""`trl-sso reward`: a reward model trained with TRL's `RewardTrainer` on the preference pairs of an SSO dataset (the
main pair, optionally the two steering pairs too), evaluated by pairwise accuracy on a held-out split, saved with a
reward-model card and optionally published."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer
from trl import RewardConfig, RewardTrainer

from ..cards import reward_model_card
from ..config import settle_device_and_precision
from ..data import MAIN_PAIR_COLUMNS, PAIRS, load_sso_dataset, pair_texts, required_columns, validate_source
from ..hub import push_folder
from ..hub_token import TokenFreePickle
from ..names import hub_id
from ..options import check_ranges
from .common import derive, ignore_bias_buffers, require_model, train_and_save


@dataclass
class SSORewardConfig(TokenFreePickle, RewardConfig):
    """TRL's `RewardConfig` with trl-sso's CPU-friendly precision defaults (see `SSOConfig`); its Hub token is never
    pickled (`trl_sso.hub_token`)."""

    def __post_init__(self):
        settle_device_and_precision(self)
        super().__post_init__()


@dataclass
class RewardScriptArguments:
    """Options of `trl-sso reward` beyond TRL's script, model and reward arguments."""

    use_steering_pairs: bool = field(
        default=False,
        metadata={
            "help": "Also train on the steering pairs (x+; y+ > y-) and (x-; y_o > y+), principles in the prompt."
        },
    )
    eval_dataset: str | None = field(
        default=None, metadata={"help": "A separate preference dataset to evaluate on (path or Hub id)."}
    )
    eval_split_ratio: float = field(
        default=0.1,
        metadata={"help": "Share of the training pairs held out for evaluation when no eval dataset is given."},
    )

    def __post_init__(self):
        check_ranges(self)


def reward_pairs(dataset, use_steering_pairs: bool, processing_class=None):
    """prompt/chosen/rejected pairs of an SSO dataset: the main pair, plus with `use_steering_pairs` the positive and
    negative steering pairs (`trl_sso.data.PAIRS`), their principle in the prompt as the trainer puts it."""
    if not use_steering_pairs:
        return dataset.select_columns(list(MAIN_PAIR_COLUMNS))
    return Dataset.from_list(
        [
            dict(zip(MAIN_PAIR_COLUMNS, texts, strict=True))
            for record in dataset
            for texts in pair_texts(record, PAIRS, processing_class).values()
        ]
    )


def train_reward(script_args, reward_args: RewardScriptArguments, training_args, model_args):
    """Train, evaluate (pairwise accuracy), save and optionally publish a reward model. Returns `(trainer,
    metrics)`."""
    if not script_args.dataset_name:
        raise ValueError(
            "`--dataset_name` is required: a `trl-sso generate` folder, a dataset file or a Hub dataset id."
        )
    require_model(model_args, "reward")
    if script_args.dataset_streaming:
        raise ValueError(
            "`--dataset_streaming` does not apply to `trl-sso reward`, which holds out part of the pairs for its "
            "accuracy: drop it (the pairs of an SSO dataset fit in memory)."
        )
    if model_args.use_peft and model_args.lora_task_type == "CAUSAL_LM":
        model_args = derive(model_args, lora_task_type="SEQ_CLS")  # a reward model is a sequence classifier
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    dataset = load_sso_dataset(
        script_args.dataset_name, script_args.dataset_config, split=script_args.dataset_train_split
    )
    columns = required_columns(steer_coef=0.1 if reward_args.use_steering_pairs else 0.0)
    validate_source(dataset, repr(script_args.dataset_name), columns)
    pairs = reward_pairs(dataset, reward_args.use_steering_pairs, tokenizer)
    if reward_args.eval_dataset:
        train, evaluation = pairs, reward_pairs(load_sso_dataset(reward_args.eval_dataset), False)
    else:
        split = pairs.train_test_split(test_size=reward_args.eval_split_ratio, seed=training_args.seed)
        train, evaluation = split["train"], split["test"]
    push = training_args.push_to_hub
    training_args = derive(training_args, push_to_hub=False)  # published once, after training, with the reward card
    trainer, _ = train_and_save(
        RewardTrainer,
        model_args.model_name_or_path,
        model_args,
        training_args,
        before_train=ignore_bias_buffers if script_args.ignore_bias_buffers else None,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
    )
    saved = Path(training_args.output_dir) / "eval_results.json"
    if trainer.sso_reused_training and saved.is_file():  # a finished run's evaluation, as it was
        metrics = json.loads(saved.read_text())
    else:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(evaluation)
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    if trainer.accelerator.is_main_process:
        output_dir = Path(training_args.output_dir)
        provenance = {
            "base_model": hub_id(model_args.model_name_or_path),
            "dataset_name": hub_id(script_args.dataset_name),
            "use_steering_pairs": reward_args.use_steering_pairs,
        }
        (output_dir / "sso_reward.json").write_text(json.dumps(provenance))
        repo_id = training_args.hub_model_id or output_dir.name
        reward_model_card(output_dir, repo_id).save(str(output_dir / "README.md"))
        if push:
            url = push_folder(
                output_dir,
                repo_id,
                kind="reward_model",
                private=bool(training_args.hub_private_repo),
                token=training_args.hub_token,
            )
            trainer.accelerator.print(f"Published the reward model to {url}")
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return trainer, metrics

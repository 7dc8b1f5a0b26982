"""`trl-sso train`: SSO training from TRL's script, model, training and dataset-mixture arguments, in the shape of
TRL's own `dpo.py` (ScriptArguments + SSOConfig + ModelConfig + DatasetMixtureConfig), with checkpoint resume,
saving and publishing."""

import logging

from ..data import load_sso_dataset, required_columns, to_canonical, validate_source
from .common import finish_training, ignore_bias_buffers, require_model, train_and_save


logger = logging.getLogger(__name__)


def training_data(script_args, training_args, dataset_args):
    """`(train, eval)` datasets in the SSO schema: the `--datasets` mixture (TRL's `get_dataset`, with `--streaming`
    and `--test_split_size`) when given, else `--dataset_name` (with `--dataset_config`, the split names and
    `--dataset_streaming`); `eval` is `None` when `--eval_strategy no`."""
    streaming = dataset_args.streaming if dataset_args.datasets else script_args.dataset_streaming
    if streaming and training_args.max_steps <= 0:
        flag = "--streaming" if dataset_args.datasets else "--dataset_streaming"
        raise ValueError(f"`{flag}` needs `--max_steps`: a streamed dataset has no length to count epochs by.")
    evaluate = training_args.eval_strategy != "no"
    if dataset_args.datasets:
        from trl import get_dataset

        if script_args.dataset_name:
            logger.warning("Both `--datasets` and `--dataset_name` are given: the `--datasets` mixture is used.")
        splits = get_dataset(dataset_args)
        for split in [script_args.dataset_train_split] + ([script_args.dataset_test_split] if evaluate else []):
            if split not in splits:
                raise ValueError(
                    f"The `--datasets` mixture has no split {split!r} (it has {list(splits)}). Set "
                    "`--test_split_size` to hold out an evaluation split, or `--eval_strategy no`."
                )
        train = to_canonical(splits[script_args.dataset_train_split])
        return train, to_canonical(splits[script_args.dataset_test_split]) if evaluate else None
    if not script_args.dataset_name:
        raise ValueError(
            "`--dataset_name` (a `trl-sso generate` folder, a dataset file or a Hub dataset id) or a `--datasets` "
            "mixture is required."
        )
    if dataset_args.test_split_size is not None or dataset_args.streaming:
        raise ValueError(
            "`--test_split_size` and `--streaming` apply to a `--datasets` mixture; with `--dataset_name` use "
            "`--dataset_test_split` and `--dataset_streaming`."
        )
    source = (script_args.dataset_name, script_args.dataset_config)
    train = load_sso_dataset(*source, split=script_args.dataset_train_split, streaming=streaming)
    columns = required_columns(training_args.sso_objective, training_args.sso_steer_coef)
    validate_source(train, repr(script_args.dataset_name), columns)
    evaluation = (
        load_sso_dataset(*source, split=script_args.dataset_test_split, streaming=streaming) if evaluate else None
    )
    return train, evaluation


def train_sso(script_args, training_args, model_args, dataset_args=None):
    """Train a policy (or a data generator) with SSO; returns the trainer. Resumes from the last checkpoint in
    `output_dir` when there is one, saves the model or adapter with its tokenizer, metrics and SSO card, publishes
    with `--push_to_hub`, and ends the trainer (trackers, process group) as TRL's scripts do."""
    from trl import DatasetMixtureConfig

    from ..trainer import SSOTrainer

    require_model(model_args, "train")
    train, evaluation = training_data(script_args, training_args, dataset_args or DatasetMixtureConfig())
    mixture = dataset_args.datasets if dataset_args else None
    sources = [config.path for config in mixture] if mixture else [script_args.dataset_name]
    trainer, output = train_and_save(
        SSOTrainer,
        model_args.model_name_or_path,
        model_args,
        training_args,
        before_train=ignore_bias_buffers if script_args.ignore_bias_buffers else None,
        data=[*sources, script_args.dataset_config, script_args.dataset_train_split],
        train_dataset=train,
        eval_dataset=evaluation,
    )
    finish_training(trainer, output, training_args, model_args, sources)
    return trainer

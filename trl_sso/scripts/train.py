"""`trl-sso train`: SSO training from TRL's script, model and training arguments, in the shape of TRL's own
`dpo.py` (ScriptArguments + SSOConfig + ModelConfig), with checkpoint resume, saving and publishing."""


def train_sso(script_args, training_args, model_args):
    """Train a policy (or a data generator) with SSO; returns the trainer. Resumes from the last checkpoint in
    `output_dir` when there is one, saves the model or adapter with its tokenizer, metrics and SSO card, and publishes
    with `--push_to_hub`."""
    from ..cards import hub_id
    from ..data import load_sso_dataset
    from ..trainer import SSOTrainer
    from .common import train_and_save

    if not script_args.dataset_name:
        raise ValueError(
            "`--dataset_name` is required: a `trl-sso generate` folder, a dataset file or a Hub dataset id."
        )
    source = (script_args.dataset_name, script_args.dataset_config)
    train = load_sso_dataset(*source, split=script_args.dataset_train_split)
    evaluation = None
    if training_args.eval_strategy != "no":
        evaluation = load_sso_dataset(*source, split=script_args.dataset_test_split)
    trainer, output = train_and_save(
        SSOTrainer,
        model_args.model_name_or_path,
        model_args,
        training_args,
        train_dataset=train,
        eval_dataset=evaluation,
    )
    trainer.log_metrics("train", output.metrics)
    trainer.save_metrics("train", output.metrics)
    trainer.save_state()
    dataset_name = hub_id(script_args.dataset_name)
    if dataset_name:
        trainer.create_model_card(dataset_name=dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    return trainer

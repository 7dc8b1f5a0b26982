"""`trl-sso train` as a library function: SSO training from script, model and training arguments, in the shape of
TRL's own `dpo.py` (ScriptArguments + ModelConfig + SSOConfig), with checkpoint resume, saving and publishing.

Also the pieces the reward command shares: model loading options, PEFT / quantization set-up with clear errors, the
last checkpoint of an output folder.
"""

import importlib.util
import logging
import os
from pathlib import Path


logger = logging.getLogger(__name__)


def model_init_kwargs(model_args, training_args) -> dict:
    kwargs = dict(revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code,
                  attn_implementation=model_args.attn_implementation, dtype=model_args.dtype)
    kwargs.update(getattr(training_args, "model_init_kwargs", None) or {})
    return kwargs


def peft_and_quantization(model_args):
    """`(peft_config, quantization_config)` from the `--use_peft` / `--load_in_4bit` options, with clear errors for
    impossible combinations."""
    from trl import get_peft_config, get_quantization_config

    if model_args.load_in_4bit or model_args.load_in_8bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                "`--load_in_4bit` / `--load_in_8bit` need bitsandbytes, which is not installed. Install it with "
                "`pip install trl-sso[qlora]`, or drop the option to train in full precision."
            )
        if not model_args.use_peft:
            raise ValueError(
                "A quantized model cannot be fine-tuned directly: add `--use_peft` (QLoRA trains a LoRA adapter on the "
                "frozen 4-bit model), or drop `--load_in_4bit`."
            )
    return get_peft_config(model_args), get_quantization_config(model_args)


def build_trainer(trainer_class, model_name: str, model_args, **kwargs):
    """`trainer_class(model_name, ...)`, turning PEFT's error about unmatched target modules into one naming the fix."""
    try:
        return trainer_class(model_name, **kwargs)
    except ValueError as error:
        if "not found in the base model" in str(error) or "Target modules" in str(error):
            raise ValueError(
                f"`--lora_target_modules {' '.join(model_args.lora_target_modules or [])}` match no module of "
                f"{model_name}. Name its linear layers (e.g. `q_proj v_proj` for Llama-style models) or use "
                "`--lora_target_modules all-linear`."
            ) from error
        raise


def last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def hub_id(name: str | None) -> str | None:
    """`name` when it is a Hub id (`namespace/name`), `None` for a local path (which says nothing on a card)."""
    return name if name and not Path(name).exists() and "/" in name and not name.startswith((".", "/")) else None


def train_sso(script_args, training_args, model_args):
    """Train a policy (or a generator) with SSO; returns the trainer. Resumes from the last checkpoint in
    `output_dir` when there is one, saves the model or adapter with its tokenizer, metrics and SSO card, and publishes
    with `--push_to_hub`."""
    from .hub import to_canonical
    from .io import load_any
    from .trainer import SSOTrainer

    if not script_args.dataset_name:
        raise ValueError("`--dataset_name` is required: a `trl-sso generate` folder, a dataset file or a Hub dataset id.")
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    peft_config, quantization_config = peft_and_quantization(model_args)
    train = to_canonical(load_any(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split))
    evaluation = None
    if training_args.eval_strategy != "no":
        evaluation = to_canonical(load_any(script_args.dataset_name, script_args.dataset_config,
                                           script_args.dataset_test_split))
    trainer = build_trainer(SSOTrainer, model_args.model_name_or_path, model_args, args=training_args,
                            train_dataset=train, eval_dataset=evaluation, peft_config=peft_config,
                            quantization_config=quantization_config)
    resume = training_args.resume_from_checkpoint or last_checkpoint(training_args.output_dir)
    if resume:
        trainer.accelerator.print(f"Resuming from {resume}.")
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    dataset_name = hub_id(script_args.dataset_name)
    if dataset_name:
        trainer.create_model_card(dataset_name=dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    return trainer

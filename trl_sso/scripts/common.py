"""What every training command shares: model loading options, PEFT / quantization with clear errors, and the
build-train-save sequence that resumes from the last checkpoint of the output folder."""

import importlib.util
import os


def model_init_kwargs(model_args, training_args) -> dict:
    """The `from_pretrained` options of TRL's `ModelConfig` and `--trust_remote_code`, plus any `model_init_kwargs`."""
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
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
                "A quantized model cannot be fine-tuned directly: add `--use_peft` (QLoRA trains a LoRA adapter on "
                "the frozen 4-bit model), or drop `--load_in_4bit`."
            )
    return get_peft_config(model_args), get_quantization_config(model_args)


def last_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-*` folder in `output_dir`, or `None`."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def build_trainer(trainer_class, model_name: str, model_args, training_args, **kwargs):
    """`trainer_class(model_name, args=training_args, ...)` with the model options of `model_args` (PEFT,
    quantization, `from_pretrained` options); PEFT's error about unmatched target modules becomes one naming the
    fix."""
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    peft_config, quantization_config = peft_and_quantization(model_args)
    try:
        return trainer_class(
            model_name, args=training_args, peft_config=peft_config, quantization_config=quantization_config, **kwargs
        )
    except ValueError as error:
        if "not found in the base model" in str(error) or "Target modules" in str(error):
            raise ValueError(
                f"`--lora_target_modules {' '.join(model_args.lora_target_modules or [])}` match no module of "
                f"{model_name}. Name its linear layers (e.g. `q_proj v_proj` for Llama-style models) or use "
                "`--lora_target_modules all-linear`."
            ) from error
        raise


def ignore_bias_buffers(trainer) -> None:
    """`--ignore_bias_buffers`, as TRL's scripts apply it: DDP skips the boolean buffers (attention masks) when it
    synchronises buffers, which fails for them on some models."""
    import torch

    trainer.model._ddp_params_and_buffers_to_ignore = [
        name for name, buffer in trainer.model.named_buffers() if buffer.dtype == torch.bool
    ]


def train_and_save(trainer_class, model_name: str, model_args, training_args, before_train=None, **kwargs):
    """Build the trainer (`build_trainer`), call `before_train(trainer)` if given, train, resuming from
    `--resume_from_checkpoint` or the last checkpoint of the output folder, and save the model (or adapter; its base
    named by Hub id when it has one, see `trl_sso.hub.point_adapter_at`). Returns `(trainer, train_output)`."""
    trainer = build_trainer(trainer_class, model_name, model_args, training_args, **kwargs)
    if before_train is not None:
        before_train(trainer)
    resume = training_args.resume_from_checkpoint or last_checkpoint(training_args.output_dir)
    if resume:
        trainer.accelerator.print(f"Resuming from {resume}.")
    output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    if trainer.accelerator.is_main_process:  # an adapter names its base by Hub id, never by a local folder
        from ..cards import hub_id
        from ..hub import point_adapter_at

        point_adapter_at(training_args.output_dir, hub_id(model_name), model_args.model_revision)
    trainer.accelerator.wait_for_everyone()
    return trainer, output

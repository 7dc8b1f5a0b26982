"""`trl-sso online`: SSO with the triples sampled from the current policy during training (`OnlineSSOTrainer`), from
TRL's script, model and training arguments (`OnlineSSOConfig`), with checkpoint resume, saving, the card and
publishing as `trl-sso train` does them.

The prompts come from `--dataset_name` (a prompt file, a saved dataset folder or a Hub dataset with a `prompt`
column; `--dataset_train_split`), by default the 200 packaged prompts; the policy from `--model_name_or_path`, by
default the packaged SmolLM2-135M-Instruct, so that the command runs offline.
"""

import logging
import os

from ..data import render
from .common import finish_training, ignore_bias_buffers, starting_policy, train_and_save


logger = logging.getLogger(__name__)


def train_online(script_args, training_args, model_args):
    """Train with `OnlineSSOTrainer`; returns the trainer. The prompt set is checked before any model loads: prompts
    that fill `max_length` are dropped and counted as `train` drops them, and a set too small for one generation
    stops the run (`check_one_generation`)."""
    from datasets import Dataset

    from ..generation.prompts import load_prompts
    from ..online_trainer import OnlineSSOTrainer

    policy, _ = starting_policy(model_args)
    prompts = load_prompts(script_args.dataset_name, "prompt", script_args.dataset_train_split)
    kept = drop_long_prompts(prompts, policy, model_args, training_args)
    check_one_generation(prompts, kept, training_args)
    trainer, output = train_and_save(
        OnlineSSOTrainer,
        policy,
        model_args,
        training_args,
        before_train=ignore_bias_buffers if script_args.ignore_bias_buffers else None,
        data=[script_args.dataset_name, script_args.dataset_train_split, len(kept)],
        train_dataset=Dataset.from_dict({"prompt": kept}),
    )
    finish_training(trainer, output, training_args, model_args, [script_args.dataset_name])
    return trainer


def drop_long_prompts(prompts, policy: str, model_args, training_args) -> list:
    """The prompts shorter than `max_length` tokens with the chat template; the others dropped with a warning, as the
    trainer drops records whose prompt fills `max_length`."""
    if training_args.max_length is None:
        return list(prompts)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        policy, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    lengths = [len(tokenizer(render(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]
    kept = [p for p, length in zip(prompts, lengths) if length < training_args.max_length]
    if len(kept) < len(prompts):
        logger.warning(
            f"Dropped {len(prompts) - len(kept)} of {len(prompts)} prompts that fill `max_length="
            f"{training_args.max_length}` with the chat template. Raise `max_length` to keep them."
        )
    return kept


def check_one_generation(prompts, kept: list, training_args) -> None:
    """Refuse a prompt set that gives no generation batch (`per_device_train_batch_size` x `steps_per_generation`
    prompts on each process), before any model loads: the run would train nothing."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    batch, spg = training_args.per_device_train_batch_size, training_args.steps_per_generation
    needed = batch * spg * processes
    if len(kept) >= needed:
        return
    left_out = []
    if prompts.empty_rows:
        left_out.append(f"{len(prompts.empty_rows)} dropped as empty")
    if len(kept) < len(prompts):
        left_out.append(f"{len(prompts) - len(kept)} dropped as longer than `max_length`")
    left_out = f" ({'; '.join(left_out)})" if left_out else ""
    across = f" x {processes} processes" if processes > 1 else ""
    raise ValueError(
        f"{len(kept)} prompts{left_out} give 0 generations of `per_device_train_batch_size` ({batch}) x "
        f"`steps_per_generation` ({spg}){across} = {needed} prompts, so nothing would be trained: lower "
        "`steps_per_generation` or `per_device_train_batch_size`, or add prompts."
    )

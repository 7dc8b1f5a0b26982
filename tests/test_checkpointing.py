"""Gradient checkpointing through `Trainer.train()`, as every GPU recipe runs it (`gradient_checkpointing: true`, and
DPOConfig's default): the losses and gradients of a few optimizer steps equal those without checkpointing.

Checkpointing is switched on by `Trainer.train()` (not by `training_step`), so each run goes through `train()`. The
cases cover what a refactor could break: the shared-prompt and two-row layouts, the backward per pair and the single
backward pass, a full model with a reference model forwarded in the step, and LoRA, whose reference pass switches the
adapter off inside the step. Also: a scoring pass (`trl_sso.sharing.completion_logps`) on a trainer's model before it
trains leaves the trainer's fused LM head, and its metrics, as they were.
"""

import pytest
import torch
from conftest import FirstGradients, policy_and_reference, sso_args, sso_dataset
from numerics import assert_close_to_scale
from peft import LoraConfig

from trl_sso import SSOTrainer, sharing


pytestmark = pytest.mark.usefixtures("each_thread_count")
# Recomputing the forward in the backward repeats the same kernels on the same inputs: the numbers match to rounding
LOSS_RTOL, GRAD_RTOL = 1e-6, 1e-5

CASES = {  # each setting on one side at least; LoRA with the backward per pair, where PEFT switches its adapter
    "full model, two rows, one backward": dict(sso_share_prompt=False, sso_backward_per_pair=False),
    "LoRA, shared layout, backward per pair": dict(lora=True, sso_share_prompt=True, sso_backward_per_pair=True),
}


def train(tiny_model_dir, tokenizer, tmp_path, checkpointing: bool, lora: bool = False, **overrides):
    """Losses of 2 optimizer steps and the first step's gradients, through `Trainer.train()`."""
    torch.manual_seed(0)
    models = policy_and_reference(tiny_model_dir)
    if lora:
        models.pop("ref_model")  # the reference is the policy with its adapter off, forwarded inside the step
    peft = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False) if lora else None
    args = sso_args(
        tmp_path / f"checkpointing-{checkpointing}",
        gradient_checkpointing=checkpointing,
        precompute_ref_log_probs=False,
        **overrides,
    )
    callback = FirstGradients()
    trainer = SSOTrainer(
        **models,
        args=args,
        train_dataset=sso_dataset(),
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[callback],
    )
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = model.get_base_model() if lora else model
    assert base.is_activation_checkpointing is checkpointing
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and callback.grads
    return losses, callback.grads


@pytest.mark.parametrize("case", list(CASES))
def test_checkpointing_keeps_losses_and_gradients(tiny_model_dir, tokenizer, tmp_path, case):
    with_it = train(tiny_model_dir, tokenizer, tmp_path, checkpointing=True, **CASES[case])
    without = train(tiny_model_dir, tokenizer, tmp_path, checkpointing=False, **CASES[case])
    assert_close_to_scale(torch.tensor(with_it[0]), torch.tensor(without[0]), LOSS_RTOL, name="losses")
    assert with_it[1].keys() == without[1].keys()
    for name, grad in without[1].items():
        assert_close_to_scale(with_it[1][name], grad, GRAD_RTOL, name=name)


def test_a_training_step_after_a_scoring_pass_on_the_trainers_model(tiny_model_dir, tokenizer, tmp_path):
    """Scoring the trainer's own model (as the signal measurement may) keeps the head DPOTrainer gave it, with the
    entropy the trainer logs; the head is patched once, and compacted on a CPU."""
    trainer = SSOTrainer(
        **policy_and_reference(tiny_model_dir),
        args=sso_args(tmp_path, max_steps=1),
        train_dataset=sso_dataset(),
        processing_class=tokenizer,
    )
    forward = trainer.model.forward
    scores = sharing.completion_logps(trainer.model, [([1, 2, 3], [[4, 5], [6]])], tokenizer.pad_token_id)
    assert [count for _, count in scores[0]] == [2, 1]
    assert trainer.model.forward is forward  # the same compacted head: not patched again
    trainer.train()
    assert any("entropy" in entry for entry in trainer.state.log_history)

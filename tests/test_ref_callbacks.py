"""TRL's reference-model callbacks with SSOTrainer: `sync_ref_model=True` (TRL's `SyncRefModelCallback`) and the
experimental `BEMACallback(update_ref_model=True)`, which reads the reference model from the callback's arguments."""

import pytest
import torch
from conftest import policy_and_reference, sso_args, sso_dataset

from trl_sso import SSOTrainer


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_sync_ref_model_copies_the_policy_into_the_reference(tiny_model_dir, tokenizer, tmp_path):
    models = policy_and_reference(tiny_model_dir)
    args = sso_args(
        tmp_path, max_steps=1, precompute_ref_log_probs=False, sync_ref_model=True, ref_model_sync_steps=1,
        ref_model_mixup_alpha=1.0,
    )  # fmt: skip
    trainer = SSOTrainer(**models, args=args, train_dataset=sso_dataset(), processing_class=tokenizer)
    trainer.train()
    policy, reference = parameters(trainer.model), parameters(trainer.ref_model)
    assert policy.keys() == reference.keys()
    for name, value in policy.items():  # alpha 1: the reference is the policy after the step
        torch.testing.assert_close(reference[name], value)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bema_callback_updates_the_reference(tiny_model_dir, tokenizer, tmp_path):
    from trl.experimental.bema_for_ref_model import BEMACallback

    models = policy_and_reference(tiny_model_dir)
    before = parameters(models["ref_model"])
    bema = BEMACallback(update_freq=1, update_ref_model=True, ref_model_update_freq=1, ref_model_update_after=1)
    args = sso_args(tmp_path, max_steps=2, precompute_ref_log_probs=False)
    trainer = SSOTrainer(
        **models, args=args, train_dataset=sso_dataset(), processing_class=tokenizer, callbacks=[bema]
    )
    trainer.train()  # TRL 1.16 with DPOTrainer's handler: ValueError("'ref_model' not found in kwargs.")
    after = parameters(trainer.ref_model)
    assert any(not torch.equal(after[name], value) for name, value in before.items())
    # the reference holds BEMA's running weights
    running = dict(bema.running_model.named_parameters())
    for name, value in after.items():
        torch.testing.assert_close(value, running[name].detach())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_bema_callback_added_later_gets_the_reference_too(tiny_model_dir, tokenizer, tmp_path):
    from trl.experimental.bema_for_ref_model import BEMACallback

    args = sso_args(tmp_path, precompute_ref_log_probs=False)
    trainer = SSOTrainer(
        **policy_and_reference(tiny_model_dir), args=args, train_dataset=sso_dataset(), processing_class=tokenizer
    )
    assert not hasattr(trainer.callback_handler, "ref_model")  # no experimental callback: TRL's handler, unchanged
    trainer.add_callback(BEMACallback(update_ref_model=True))
    assert trainer.callback_handler.ref_model is trainer.ref_model

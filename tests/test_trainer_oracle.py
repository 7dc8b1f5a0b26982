"""SSOTrainer against TRL's DPOTrainer as an oracle, on the same model and data.

- steering off and W off: SSO is DPO on the main pair, loss and gradients, for every base loss DPOTrainer offers
  (each `loss_type`, the MPO list with `loss_weights`, WPO, LD-DPO, the f-divergences; MoE models with their
  load-balancing loss in `test_dpo_surface.py`);
- W off, steer coefficient c: SSO = DPO(main) + c * (DPO on x+ data + DPO on x- data with original > chosen), where
  the oracle datasets carry the principle as a system message (or, for text prompts, prepended to the prompt);
- through `training_step`, which backpropagates each steering pair on its own (`sso_backward_per_pair`): the same
  gradients as one backward pass of the whole loss, for every objective, with the gradient through W.
"""

import pytest
import torch
from conftest import policy_and_reference as models
from conftest import sso_args, sso_dataset, sso_rows
from datasets import Dataset
from numerics import assert_close_to_scale
from trl import DPOConfig, DPOTrainer

from trl_sso import SSOTrainer
from trl_sso.loss import BASE_LOSS_TYPES


N = 4  # examples in the compared batch
# Gradients: every entry within 1e-5 of the tensor's largest entry (tests/numerics.py). The summation-order noise
# measured across thread counts and CPU vector units stays under 1e-6 of it; a wrong term moves entries by far more.
GRAD_RTOL = 1e-5

pytestmark = pytest.mark.usefixtures("each_thread_count")


def loss_and_grads(trainer):
    trainer.model.train()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(N)]))
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def step_loss_and_grads(trainer, accumulation_steps=1):
    """Like `loss_and_grads`, through `training_step` (the path of `train()`), counting the backward passes."""
    trainer.current_gradient_accumulation_steps = accumulation_steps  # set by `train()` in normal use
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(N)]))
    backward, calls = trainer.accelerator.backward, []
    trainer.accelerator.backward = lambda loss, **kw: (calls.append(loss), backward(loss, **kw))
    trainer.model.zero_grad()
    loss = trainer.training_step(trainer.model, batch)
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    return loss, grads, len(calls)


def dpo_trainer(model_dir, tokenizer, dataset, tmp_path, loss_type="sigmoid", **overrides):
    settings = dict(bf16=False, gradient_checkpointing=False, report_to="none", max_length=128, beta=0.1, seed=0)
    settings["dataloader_pin_memory"] = False
    args = DPOConfig(output_dir=str(tmp_path), loss_type=loss_type, **{**settings, **overrides})
    return DPOTrainer(**models(model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)


def dpo_loss_and_grads(model_dir, tokenizer, dataset, tmp_path, loss_type="sigmoid", **overrides):
    return loss_and_grads(dpo_trainer(model_dir, tokenizer, dataset, tmp_path, loss_type, **overrides))


def steered_rows(conversational, system_column, winner, loser):
    rows = []
    for row in sso_rows(conversational, N):
        system = row[system_column]
        prompt = (
            [{"role": "system", "content": system}, *row["prompt"]]
            if conversational
            else f"{system}\n\n{row['prompt']}"
        )
        rows.append({"prompt": prompt, "chosen": row[winner], "rejected": row[loser]})
    return Dataset.from_list(rows)


def assert_close(got, expected, scales=None, rtol=GRAD_RTOL):
    """The same loss (tight: a scalar of order 1, summed the same way) and the same gradients (to the tensor's scale,
    or to `scales[name]` where the expected gradient is a sum of oracle gradients that may cancel)."""
    loss, grads = got
    expected_loss, expected_grads = expected
    assert abs(loss.item() - 0.6931) > 1e-3 and abs(loss.item() - 25.0) > 1e-3  # policy != reference
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        scale = scales[name] if scales else None
        assert_close_to_scale(grads[name], expected_grads[name], rtol, scale=scale, name=name)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("conversational", [True, False], ids=["conversational", "standard"])
def test_steering_and_weight_off_equals_dpo(tiny_model_dir, tokenizer, tmp_path, loss_type, conversational):
    dataset = sso_dataset(conversational, N)
    args = sso_args(tmp_path / "sso", sso_steer_coef=0.0, sso_use_weight=False, loss_type=loss_type)
    sso = SSOTrainer(**models(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    expected = dpo_loss_and_grads(tiny_model_dir, tokenizer, dataset, tmp_path / "dpo", loss_type)
    assert_close(loss_and_grads(sso), expected)


# Every base loss of DPOTrainer, as DPOConfig sets it: each `loss_type` (with a label smoothing where it reads one),
# the MPO list, and the DPO variants that reshape every loss (WPO, LD-DPO, the f-divergences)
SMOOTHED = ("exo_pair", "robust", "aot", "aot_unpaired")
FAST = ("aot",)  # in the fast subset (sigmoid and IPO are there by the test above); the others in the whole suite
SLOW = pytest.mark.slow
BASE_LOSSES = [
    *(
        pytest.param(
            {"loss_type": name, **({"label_smoothing": 0.1} if name in SMOOTHED else {})},
            id=name,
            marks=() if name in FAST else pytest.mark.slow,
        )
        for name in BASE_LOSS_TYPES
    ),
    pytest.param({"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}, id="mpo"),
    pytest.param({"use_weighting": True}, id="wpo", marks=SLOW),
    pytest.param({"use_weighting": True, "loss_type": "ipo"}, id="wpo-ipo", marks=SLOW),
    pytest.param({"ld_alpha": 0.5}, id="ld"),
    pytest.param({"ld_alpha": 0.3, "loss_type": "ipo"}, id="ld-ipo", marks=SLOW),
    # WPO and LD-DPO read per-token outputs, laid out differently in DPO's two rows (models that cannot share prompts)
    pytest.param({"use_weighting": True, "sso_share_prompt": False}, id="wpo-two-rows", marks=SLOW),
    pytest.param({"ld_alpha": 0.5, "sso_share_prompt": False}, id="ld-two-rows", marks=SLOW),
    *(
        pytest.param({"f_divergence_type": kind, "f_alpha_divergence_coef": 0.5}, id=kind, marks=SLOW)
        for kind in ("forward_kl", "js_divergence", "alpha_divergence")
    ),
]


@pytest.mark.parametrize("settings", BASE_LOSSES)
def test_every_base_loss_equals_dpo(tiny_model_dir, tokenizer, tmp_path, settings):
    """Steering and W off, each base loss of DPOTrainer: SSO is DPO on the main pair, loss and gradients."""
    dataset = sso_dataset(True, N)
    settings = dict(settings)
    loss_type = settings.pop("loss_type", "sigmoid")
    layout = {"sso_share_prompt": settings.pop("sso_share_prompt", True)}
    args = sso_args(
        tmp_path / "sso", sso_steer_coef=0.0, sso_use_weight=False, loss_type=loss_type, **layout, **settings
    )
    sso = SSOTrainer(**models(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    expected = dpo_loss_and_grads(tiny_model_dir, tokenizer, dataset, tmp_path / "dpo", loss_type, **settings)
    # DiscoPOP mixes its two terms with sigmoid(logits / discopop_tau): the log-probs' rounding (which differs between
    # the shared layout and DPO's rows) reaches its gradient multiplied by 1 / discopop_tau = 20
    assert_close(loss_and_grads(sso), expected, rtol=GRAD_RTOL * (20 if loss_type == "discopop" else 1))


STEERED_LOSSES = [
    pytest.param({"loss_type": "sigmoid"}, True, id="sigmoid-conversational"),
    pytest.param({"loss_type": "sigmoid"}, False, id="sigmoid-standard"),
    pytest.param({"loss_type": "ipo"}, True, id="ipo-conversational"),
    pytest.param({"loss_type": "ipo"}, False, id="ipo-standard"),
    pytest.param(
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}, True, id="mpo", marks=SLOW
    ),
    # sorted within each pair's batch
    pytest.param({"loss_type": "aot", "label_smoothing": 0.1}, True, id="aot", marks=SLOW),
    pytest.param({"loss_type": "sft"}, True, id="sft", marks=SLOW),  # a batch mean per pair
    pytest.param({"use_weighting": True}, True, id="wpo", marks=SLOW),
    pytest.param({"ld_alpha": 0.5}, True, id="ld", marks=SLOW),
    pytest.param({"f_divergence_type": "js_divergence"}, True, id="js_divergence", marks=SLOW),
]


@pytest.mark.parametrize("settings,conversational", STEERED_LOSSES)
def test_weight_off_equals_dpo_on_three_datasets(tiny_model_dir, tokenizer, tmp_path, settings, conversational):
    """W off, steer coefficient c: each pair trains on its base loss as DPOTrainer trains on its one pair."""
    settings = dict(settings)
    loss_type = settings.pop("loss_type", "sigmoid")
    c = 0.3
    args = sso_args(tmp_path / "sso", sso_steer_coef=c, sso_use_weight=False, loss_type=loss_type, **settings)
    sso = SSOTrainer(
        **models(tiny_model_dir), args=args, train_dataset=sso_dataset(conversational, N), processing_class=tokenizer
    )
    parts = {
        "main": sso_dataset(conversational, N).select_columns(["prompt", "chosen", "rejected"]),
        "pos": steered_rows(conversational, "positive_system", "chosen", "rejected"),
        "neg": steered_rows(conversational, "negative_system", "original", "chosen"),
    }
    oracle = {
        name: dpo_loss_and_grads(tiny_model_dir, tokenizer, data, tmp_path / name, loss_type, **settings)
        for name, data in parts.items()
    }
    expected_loss = oracle["main"][0] + c * (oracle["pos"][0] + oracle["neg"][0])
    expected_grads = {
        name: oracle["main"][1][name] + c * (oracle["pos"][1][name] + oracle["neg"][1][name])
        for name in oracle["main"][1]
    }
    # the largest terms of that sum are those of its parts: they set the scale of its rounding
    scales = {
        name: sum(k * oracle[part][1][name].abs().max().item() for k, part in ((1, "main"), (c, "pos"), (c, "neg")))
        for name in expected_grads
    }
    assert_close(loss_and_grads(sso), (expected_loss, expected_grads), scales)
    # the training path backpropagates each pair on its own (W off: the main pair too): same loss, same gradients
    loss, grads, backward_passes = step_loss_and_grads(sso)
    assert backward_passes == 3
    assert_close((loss, grads), (expected_loss, expected_grads), scales)


@pytest.mark.parametrize(
    "overrides,backward_passes",
    [
        # the gradient through W makes the main pair wait for the last one: positive steer, then the rest
        ({}, 2),
        ({"loss_type": "ipo", "sso_sft_coef": 0.1}, 2),
        # W detached: main, positive steer, negative steer
        ({"sso_weight_alpha": 0.66, "sso_detach_weight": True, "sso_sft_coef": 0.2}, 3),
        ({"sso_objective": "generator"}, 2),
    ],
    ids=["policy", "policy-ipo-sft", "policy-detached-sft", "generator"],
)
def test_backward_per_pair_gives_the_gradient_of_one_backward(
    tiny_model_dir, tokenizer, tmp_path, overrides, backward_passes
):
    def run(per_pair):
        args = sso_args(tmp_path / str(per_pair), sso_steer_coef=0.3, sso_backward_per_pair=per_pair, **overrides)
        trainer = SSOTrainer(
            **models(tiny_model_dir), args=args, train_dataset=sso_dataset(n=N), processing_class=tokenizer
        )
        return step_loss_and_grads(trainer, accumulation_steps=2)

    loss, grads, passes = run(per_pair=True)
    expected_loss, expected_grads, single = run(per_pair=False)
    assert (passes, single) == (backward_passes, 1)
    assert_close((loss, grads), (expected_loss, expected_grads))


def test_compute_loss_outside_a_training_step_leaves_the_gradients_alone(tiny_model_dir, tokenizer, tmp_path):
    trainer = SSOTrainer(
        **models(tiny_model_dir), args=sso_args(tmp_path), train_dataset=sso_dataset(n=N), processing_class=tokenizer
    )
    trainer.model.train()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(N)]))
    loss = trainer.compute_loss(trainer.model, batch)
    assert loss.requires_grad and all(p.grad is None for p in trainer.model.parameters())

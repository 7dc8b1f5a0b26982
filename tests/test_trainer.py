"""SSOTrainer end to end on a tiny random model: training, PEFT, QLoRA, precomputed references, evaluation, the model
card, bad input at the boundary, and a guard on the DPOTrainer internals it overrides."""

import inspect
import os

import pytest
import torch
from conftest import sso_args, sso_dataset, sso_rows
from datasets import Dataset
from peft import LoraConfig
from trl import DPOTrainer

from trl_sso import SSOTrainer
from trl_sso.data import SSODataError


LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # policy objective, steering and weight on
        {"sso_objective": "generator"},
        {"loss_type": "ipo", "sso_weight_alpha": 0.66, "sso_detach_weight": True, "sso_sft_coef": 0.1},
    ],
    ids=["policy", "generator", "policy-ipo-detached-sft"],
)
def test_training_reduces_the_loss(tiny_model_dir, tokenizer, tmp_path, overrides):
    args = sso_args(tmp_path, max_steps=8, learning_rate=5e-3, **overrides)
    trainer = SSOTrainer(model=tiny_model_dir, args=args, train_dataset=sso_dataset(n=2), processing_class=tokenizer)
    trainer.train()
    losses = logged(trainer, "loss")
    assert len(losses) == 8 and losses[-1] < losses[0]
    if overrides.get("sso_objective") == "generator":
        assert not logged(trainer, "rewards/margins") and logged(trainer, "steer_pos/rewards/margins")
    else:
        assert logged(trainer, "rewards/accuracies") and logged(trainer, "steer_neg/rewards/accuracies")
        assert 0.5 < logged(trainer, "sso/weight")[0] <= 1.0
    assert logged(trainer, "loss/steer_pos") and logged(trainer, "loss/sft")


def test_steer_pairs_are_not_tokenized_or_forwarded_when_off(tiny_model_dir, tokenizer, tmp_path):
    # The main pair alone needs only prompt/chosen/rejected: plain DPO data trains
    dpo_rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in sso_rows()]
    args = sso_args(tmp_path, sso_steer_coef=0.0)
    trainer = SSOTrainer(
        model=tiny_model_dir, args=args, train_dataset=Dataset.from_list(dpo_rows), processing_class=tokenizer
    )
    assert not any(c.startswith(("pos_", "neg_")) for c in trainer.train_dataset.column_names)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert not any(key.startswith(("pos_", "neg_")) for key in batch)
    trainer.train()
    assert not logged(trainer, "steer_pos/rewards/margins")


def test_generator_objective_never_forwards_the_main_pair(tiny_model_dir, tokenizer, tmp_path):
    args = sso_args(tmp_path, sso_objective="generator")
    trainer = SSOTrainer(model=tiny_model_dir, args=args, train_dataset=sso_dataset(), processing_class=tokenizer)
    assert "prompt_ids" not in trainer.train_dataset.column_names
    seen = []
    trainer.model.register_forward_pre_hook(
        lambda module, a, kw: seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    trainer.train()
    # two forwards per step (positive, negative steer pair), none of the main pair's plain prompt; one row per example
    assert len(seen) == 2 * args.max_steps and all(rows == args.per_device_train_batch_size for rows in seen)


def test_lora_uses_the_adapter_disabled_model_as_reference(tiny_model_dir, tokenizer, tmp_path):
    args = sso_args(tmp_path, max_steps=3, learning_rate=1e-2)
    trainer = SSOTrainer(
        model=tiny_model_dir,
        args=args,
        train_dataset=sso_dataset(),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )
    assert trainer.ref_model is None
    trainer.train()
    # LoRA starts as the identity, so at step 1 the policy equals its reference: every reward is exactly 0
    for key in ("rewards/margins", "steer_pos/rewards/margins", "steer_neg/rewards/chosen"):
        assert logged(trainer, key)[0] == 0.0
        assert logged(trainer, key)[-1] != 0.0
    trainer.save_model()
    assert os.path.exists(os.path.join(args.output_dir, "adapter_config.json"))
    card = open(os.path.join(args.output_dir, "README.md")).read()
    assert "library_name: peft" in card and "AutoPeftModelForCausalLM" in card


def test_qlora_4bit(tiny_model_dir, tokenizer, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    args = sso_args(tmp_path, max_steps=2)
    trainer = SSOTrainer(
        model=tiny_model_dir,
        args=args,
        train_dataset=sso_dataset(n=4),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    )
    assert getattr(trainer.model, "is_loaded_in_4bit", False)
    trainer.train()
    assert len(logged(trainer, "loss")) == 2 and all(torch.isfinite(torch.tensor(logged(trainer, "loss"))))


@pytest.mark.parametrize("objective", ["policy", "generator"])
def test_precomputed_reference_matches_live_reference(tiny_model_dir, tokenizer, tmp_path, objective):
    dataset = sso_dataset(n=4)
    live = SSOTrainer(
        model=tiny_model_dir,
        args=sso_args(tmp_path / "live", sso_objective=objective),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    pre = SSOTrainer(
        model=tiny_model_dir,
        args=sso_args(tmp_path / "pre", sso_objective=objective, precompute_ref_log_probs=True),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert pre.ref_model is None  # not kept in memory
    pairs = ("pos", "neg") if objective == "generator" else ("", "pos", "neg")
    for pair in pairs:
        for side in ("chosen", "rejected"):
            assert f"ref_{pair + '_' if pair else ''}{side}_logps" in pre.train_dataset.column_names
    with torch.no_grad():
        live_batch = live._prepare_inputs(live.data_collator([live.train_dataset[i] for i in range(4)]))
        pre_batch = pre._prepare_inputs(pre.data_collator([pre.train_dataset[i] for i in range(4)]))
        # Move the policy away from the reference so the comparison is not trivially log(2)
        for trainer in (live, pre):
            for p in trainer.model.parameters():
                p.add_(0.01)
        torch.testing.assert_close(
            live.compute_loss(live.model, live_batch), pre.compute_loss(pre.model, pre_batch), rtol=1e-5, atol=1e-6
        )
    pre.train()


def test_evaluation_logs_sso_metrics(tiny_model_dir, tokenizer, tmp_path):
    args = sso_args(tmp_path, eval_strategy="no")
    trainer = SSOTrainer(
        model=tiny_model_dir,
        args=args,
        train_dataset=sso_dataset(),
        eval_dataset=sso_dataset(n=3),
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_rewards/accuracies", "eval_steer_pos/rewards/margins", "eval_sso/weight"):
        assert key in metrics
    assert "eval_loss" in trainer.evaluate(sso_dataset(n=2))  # a raw dataset passed to evaluate is prepared too


def test_model_card(tiny_model_dir, tokenizer, tmp_path):
    args = sso_args(tmp_path, sso_weight_alpha=0.66, hub_token="hf_secret_token_never_in_cards")
    trainer = SSOTrainer(model=tiny_model_dir, args=args, train_dataset=sso_dataset(), processing_class=tokenizer)
    trainer.model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    trainer.create_model_card(dataset_name="someone/sso-round-1")
    card = open(os.path.join(args.output_dir, "README.md")).read()
    for fragment in (
        "- trl",
        "- sso",
        "library_name: transformers",
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct",
        "someone/sso-round-1",
        "| `sso_weight_alpha` | 0.66 |",
        "xiang2024sso",
        "arXiv:2410.17131",
        "https://huggingface.co/papers/2410.17131",
    ):
        assert fragment in card, fragment
    assert "DPO" not in card.split("## Citations")[0].replace("DPOTrainer", "")
    assert "hf_secret" not in card


@pytest.mark.parametrize(
    "rows,fragments",
    [
        (
            [{"prompt": "Hi", "chosen": " A", "rejected": " B"}],
            ["missing the SSO column(s)", "'original'", "generator"],
        ),
        ([{**r, "original": ""} if i == 2 else r for i, r in enumerate(sso_rows(False))], ["Row 2", "'original'"]),
        (
            [
                {**r, "prompt": [{"role": "system", "content": "S"}, *r["prompt"]]} if i == 1 else r
                for i, r in enumerate(sso_rows())
            ],
            ["Row 1", "'prompt'", "system message"],
        ),
    ],
    ids=["missing-columns", "empty-string", "system-in-prompt"],
)
def test_bad_input_fails_at_the_boundary(tiny_model_dir, tokenizer, tmp_path, rows, fragments):
    with pytest.raises(SSODataError) as error:
        SSOTrainer(
            model=tiny_model_dir,
            args=sso_args(tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    for fragment in fragments:
        assert fragment in str(error.value)


def test_dpo_config_is_refused_with_the_fix(tiny_model_dir, tokenizer, tmp_path):
    from trl import DPOConfig

    with pytest.raises(TypeError, match="Replace `DPOConfig\\(...\\)` with `SSOConfig\\(...\\)`"):
        SSOTrainer(model=tiny_model_dir, args=DPOConfig(str(tmp_path), bf16=False), train_dataset=sso_dataset())


def test_too_long_prompts_are_dropped_with_a_warning(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    import trl_sso.trainer

    warnings = []
    monkeypatch.setattr(trl_sso.trainer.logger, "warning", lambda message, *args, **kwargs: warnings.append(message))
    rows = sso_rows()
    rows[0]["positive_system"] = "Be careful. " * 100
    trainer = SSOTrainer(
        model=tiny_model_dir,
        args=sso_args(tmp_path, max_length=64),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    assert len(trainer.train_dataset) == len(rows) - 1
    assert any(f"Dropped 1 of {len(rows)} examples" in w and "`max_length=64`" in w for w in warnings), warnings


def test_dpo_internals_that_sso_overrides_still_match():
    """Fails loudly when a TRL release changes a private method or attribute that SSOTrainer relies on."""
    expected = {
        "_prepare_dataset": ["self", "dataset", "processing_class", "args", "dataset_name"],
        "_precompute_ref_logps": ["self", "dataset", "name", "batch_size"],
        "_compute_loss": ["self", "model", "inputs", "return_outputs"],
        "compute_ref_log_probs": ["self", "model", "inputs"],
        "_set_signature_columns_if_needed": ["self"],
        "create_model_card": ["self", "model_name", "dataset_name", "tags"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(DPOTrainer, name)).parameters) == params, name
    assert list(inspect.signature(SSOTrainer.__init__).parameters) == list(
        inspect.signature(DPOTrainer.__init__).parameters
    )
    source = inspect.getsource(DPOTrainer)
    for attribute in (
        "self._precompute_model_hash",
        "self._precompute_engine",
        "self.precompute_ref_logps",
        "self._metrics",
        "self._total_train_tokens",
        "self._tp_size",
        "self.loss_types",
        "self._tokenizer",
        "self._compute_loss(",
        "self._prepare_dataset(",
        "self._precompute_ref_logps(",
        "DataCollatorForPreference(",
        "add_fused_lm_head(",
    ):
        assert attribute in source, attribute


@pytest.mark.parametrize(
    "overrides, plan",
    [
        ({}, ("pos",)),  # the gradient through W makes the main pair wait for the loss's backward
        ({"sso_detach_weight": True}, ("main", "pos")),
        ({"sso_objective": "generator"}, ("pos",)),
        ({"sso_steer_coef": 0.0}, ()),
    ],
)
def test_the_backward_plan_is_written_out_not_read_from_the_pair_table(
    tiny_model_dir, tokenizer, tmp_path, monkeypatch, overrides, plan
):
    import trl_sso.data

    monkeypatch.setattr(trl_sso.data, "PAIRS", dict(reversed(list(trl_sso.data.PAIRS.items()))))
    args = sso_args(tmp_path, **overrides)
    trainer = SSOTrainer(model=tiny_model_dir, args=args, train_dataset=sso_dataset(n=2), processing_class=tokenizer)
    assert trainer._backward_plan() == plan
    assert trainer.sso_pairs[0] == ("pos" if overrides.get("sso_objective") == "generator" else "main")


def test_the_per_pair_training_step_keeps_transformers_lines():
    """`SSOTrainer.training_step` copies, around its per-pair forward and backward passes, what transformers'
    `Trainer.training_step` does (context parallelism, `torch_empty_cache_steps`, the loss scaled under gradient
    accumulation): each copied line must still be in transformers' source, and in ours. A failure here after a
    transformers upgrade says which line to bring over."""
    import inspect

    from transformers import Trainer

    from trl_sso.trainer import TRANSFORMERS_LINES

    theirs = {line.strip() for line in inspect.getsource(Trainer.training_step).splitlines()}
    ours = {line.strip() for line in inspect.getsource(SSOTrainer.training_step).splitlines()}
    assert [line for line in TRANSFORMERS_LINES if line not in theirs] == []
    assert [line for line in TRANSFORMERS_LINES if line not in ours] == []


def test_the_per_pair_training_step_empties_the_cache_as_transformers_does(
    tiny_model_dir, tokenizer, tmp_path, monkeypatch
):
    """`torch_empty_cache_steps` reaches the per-pair step: the device cache is cleared on the steps it names."""
    import trl_sso.trainer as trainer_module

    cleared = []
    monkeypatch.setattr(trainer_module, "clear_device_cache", lambda: cleared.append(True))
    args = sso_args(tmp_path, max_steps=2, torch_empty_cache_steps=1)
    trainer = SSOTrainer(model=tiny_model_dir, args=args, train_dataset=sso_dataset(n=4), processing_class=tokenizer)
    assert trainer._backward_per_pair(trainer.model.train())
    trainer.train()
    assert len(cleared) == 2  # one micro-step a step, each on a step that `torch_empty_cache_steps=1` names

"""The drop-in claim, feature by feature: every DPOConfig field is decided (`trl_sso.config.DPO_FIELDS`), the fields
that SSOTrainer supports train as in DPOTrainer, `compute_metrics` receives DPO's `EvalPrediction`, tool-calling data
trains as in DPO, and what SSO cannot take is refused in one line that says what to do."""

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import policy_and_reference as models
from conftest import sso_args, sso_dataset, sso_rows
from datasets import Dataset
from test_trainer_oracle import (
    N,
    assert_close,
    dpo_loss_and_grads,
    dpo_trainer,
    loss_and_grads,
    steered_rows,
    step_loss_and_grads,
)
from transformers import TrainingArguments
from trl import DPOConfig

from trl_sso import SSOConfig, SSOTrainer
from trl_sso.config import DPO_FIELDS


TESTS = Path(__file__).parent
REFUSED_VALUES = {"padding_free": True, "use_liger_kernel": True, "liger_kernel_config": {"rope": True}}


def test_every_dpo_config_field_is_decided(tmp_path):
    """Each field DPOConfig declares, or whose default it changes, is in `DPO_FIELDS`: supported with a test that
    exists, or refused at construction with one line naming it. A field that a new TRL adds fails here until someone
    decides; the rest of DPOConfig's fields are `TrainingArguments`', handled by transformers' Trainer for both."""
    base = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    dpo = {f.name: f for f in dataclasses.fields(DPOConfig)}
    own = set(dpo) - set(base)
    changed = {name for name in set(dpo) & set(base) if dpo[name].default != base[name].default}
    assert own | changed <= set(DPO_FIELDS), sorted((own | changed) - set(DPO_FIELDS))
    assert set(DPO_FIELDS) <= set(dpo)
    test_source = "".join(path.read_text() for path in TESTS.glob("test_*.py"))
    for name, (decision, detail) in DPO_FIELDS.items():
        assert decision in ("supported", "refused"), name
        if decision == "supported":
            assert f"def {detail}(" in test_source, f"{name}: no test named {detail}"
            continue
        with pytest.raises(ValueError) as error:
            SSOConfig(str(tmp_path), bf16=False, report_to="none", **{name: REFUSED_VALUES[name]})
        message = str(error.value)
        assert f"`{name}=" in message and detail in message and "\n" not in message


def test_the_readme_shows_the_table():
    readme = (TESTS.parent / "README.md").read_text()
    for name, (decision, _) in DPO_FIELDS.items():
        assert f"| `{name}` | {decision} |" in readme, name


# Fields that change what a DPO step computes, each set away from its default: SSO with steering and W off trains
# exactly as DPO with the same field
FIELDS = [
    pytest.param({"max_length": 44}, id="max_length"),  # cuts some completions, no prompt (35 to 38 tokens)
    pytest.param({"max_length": 44, "truncation_mode": "keep_end"}, id="truncation_mode"),
    pytest.param({"pad_to_multiple_of": 16}, id="pad_to_multiple_of", marks=pytest.mark.slow),
    pytest.param({"disable_dropout": False}, id="disable_dropout", marks=pytest.mark.slow),
    pytest.param({"dataset_num_proc": 2}, id="dataset_num_proc", marks=pytest.mark.slow),
    pytest.param({"precompute_ref_log_probs": True, "precompute_ref_batch_size": 1}, id="precompute_ref_batch_size"),
    pytest.param({"pad_token": "<|im_end|>"}, id="pad_token", marks=pytest.mark.slow),
    pytest.param({"logging_steps": 3}, id="logging_steps", marks=pytest.mark.slow),
    pytest.param(
        {"model_init_kwargs": {"dtype": "float32"}, "trust_remote_code": True},
        id="model_init_kwargs",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("settings", FIELDS)
def test_a_dpo_field_trains_as_in_dpo(tiny_model_dir, tokenizer, tmp_path, settings):
    dataset = sso_dataset(True, 4)
    if "model_init_kwargs" in settings:  # read when the trainer loads the model: pass its path, as a string
        from trl import DPOTrainer

        args = sso_args(tmp_path / "sso", sso_steer_coef=0.0, sso_use_weight=False, **settings)
        sso = SSOTrainer(tiny_model_dir, args=args, train_dataset=dataset, processing_class=tokenizer)
        dpo_args = DPOConfig(str(tmp_path / "dpo"), bf16=False, report_to="none", max_length=128, **settings)
        dpo = DPOTrainer(tiny_model_dir, args=dpo_args, train_dataset=dataset, processing_class=tokenizer)
        (loss, grads), (expected_loss, expected_grads) = loss_and_grads(sso), loss_and_grads(dpo)
        assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-6)  # policy = reference: log 2
        assert grads.keys() == expected_grads.keys()
        return
    args = sso_args(tmp_path / "sso", sso_steer_coef=0.0, sso_use_weight=False, **settings)
    sso = SSOTrainer(**models(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    expected = dpo_loss_and_grads(tiny_model_dir, tokenizer, dataset, tmp_path / "dpo", **settings)
    assert_close(loss_and_grads(sso), expected)


def test_activation_offloading_wraps_every_pass(tiny_model_dir, tokenizer, tmp_path):
    """`activation_offloading`: DPOTrainer runs its training step inside the offloading context it builds; so does
    SSOTrainer's per-pair step, each pair's forward and backward included. (TRL's offloading needs an accelerator:
    the context is replaced by one that records what runs inside it.)"""
    import contextlib

    trainer = SSOTrainer(
        **models(tiny_model_dir), args=sso_args(tmp_path), train_dataset=sso_dataset(n=2), processing_class=tokenizer
    )
    inside, events = [], []

    @contextlib.contextmanager
    def offloading():
        inside.append(True)
        yield
        inside.pop()

    trainer.maybe_activation_offload_context = offloading()
    forward, backward = trainer._pair_logps, trainer.accelerator.backward
    trainer._pair_logps = lambda *a: (events.append(("forward", bool(inside))), forward(*a))[1]
    trainer.accelerator.backward = lambda loss, **kw: (events.append(("backward", bool(inside))), backward(loss, **kw))
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    assert trainer._backward_per_pair(trainer.model)
    trainer.training_step(trainer.model, trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    assert [kind for kind, _ in events] == ["forward", "forward", "backward", "forward", "backward"]
    assert all(within for _, within in events)


@pytest.mark.slow
def test_compute_metrics_receives_dpos_eval_prediction(tiny_model_dir, tokenizer, tmp_path):
    """`compute_metrics` gets what DPOTrainer gives it for its pair: the logits of `[prompt + chosen ; prompt +
    rejected]` and their input ids, here for the main pair, while SSO's own metrics are logged beside its result."""
    seen = {}

    def compute_metrics(prediction, name):
        seen[name] = prediction
        return {"logits_mean": float(prediction.predictions.mean())}

    data = sso_dataset(True, 4)
    args = sso_args(tmp_path / "sso", per_device_eval_batch_size=4)
    sso = SSOTrainer(
        **models(tiny_model_dir),
        args=args,
        train_dataset=data,
        eval_dataset=data,
        processing_class=tokenizer,
        compute_metrics=lambda p: compute_metrics(p, "sso"),
    )
    metrics = sso.evaluate()
    dpo = dpo_trainer(tiny_model_dir, tokenizer, data, tmp_path / "dpo", per_device_eval_batch_size=4)
    dpo.compute_metrics = lambda p: compute_metrics(p, "dpo")
    dpo.evaluate(data)
    got, expected = seen["sso"], seen["dpo"]
    assert got.predictions.shape == expected.predictions.shape and got.predictions.shape[0] == 8
    assert (got.label_ids == expected.label_ids).all()
    assert abs(got.predictions - expected.predictions).max() < 1e-4 * abs(expected.predictions).max()
    assert "eval_logits_mean" in metrics and "eval_steer_pos/rewards/accuracies" in metrics


# A chat template that renders tools and tool calls, in the manner of the tool-calling templates TRL's tests use
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.content %}{{ message.content }}{% endif %}"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>{{ call.function.name }}"
    "({{ call.function.arguments | tojson }})</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
]


def tool_rows(n=4) -> list[dict]:
    """SSO records whose chosen response calls a tool, reads its result and answers, as in TRL's toolcall data."""
    rows = []
    for i, row in enumerate(sso_rows(True, n)):
        a, b = i + 2, i + 3
        row["prompt"] = [{"role": "user", "content": f"What is {a} times {b}?"}]
        call = {"type": "function", "function": {"name": "multiply", "arguments": {"a": a, "b": b}}}
        row["chosen"] = [
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "name": "multiply", "content": str(a * b)},
            {"role": "assistant", "content": f"{a * b}."},
        ]
        row["rejected"] = [{"role": "assistant", "content": f"Maybe {a + b}."}]
        row["original"] = [{"role": "assistant", "content": f"It is {a * b}."}]
        row["tools"] = json.dumps(TOOLS)
        rows.append(row)
    return rows


@pytest.mark.slow
def test_tool_calls_and_tools_train_as_in_dpo(tiny_model_dir, tokenizer, tmp_path):
    """Assistant turns with `tool_calls`, tool turns and a `tools` column: the main pair trains exactly as DPO on the
    same data, and x+ / x- carry the principle where any record carries it, with the tools and calls rendered."""
    tokenizer.chat_template = TOOL_TEMPLATE
    dataset = Dataset.from_list(tool_rows())
    args = sso_args(tmp_path / "sso", sso_steer_coef=0.0, sso_use_weight=False)
    sso = SSOTrainer(**models(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    dpo_data = dataset.select_columns(["prompt", "chosen", "rejected", "tools"])
    expected = dpo_loss_and_grads(tiny_model_dir, tokenizer, dpo_data, tmp_path / "dpo")
    assert_close(loss_and_grads(sso), expected)

    args = sso_args(tmp_path / "steered", sso_principle_placement="after_question")
    steered = SSOTrainer(**models(tiny_model_dir), args=args, train_dataset=dataset, processing_class=tokenizer)
    row = steered.train_dataset[0]
    text = tokenizer.decode(row["pos_prompt_ids"] + row["pos_chosen_ids"])
    assert "Tools: [" in text and "<tool_call>multiply" in text and "<|im_start|>tool\n6<|im_end|>" in text
    assert f"What is 2 times 3?\n\n{row_principle(dataset)}" in text
    steered.train()


def row_principle(dataset) -> str:
    return dataset[0]["positive_system"]


def test_vision_language_data_is_refused_in_one_line(tiny_model_dir, tokenizer, tmp_path):
    rows = [dict(row, images=[]) for row in sso_rows(True, 2)]
    with pytest.raises(ValueError) as error:
        SSOTrainer(
            **models(tiny_model_dir),
            args=sso_args(tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    message = str(error.value)
    assert "\n" not in message and "trains on text only" in message and "not implemented" in message


def test_plain_preference_data_names_both_ways_out(tiny_model_dir, tokenizer, tmp_path):
    plain = sso_dataset(True, 2).select_columns(["prompt", "chosen", "rejected"])
    with pytest.raises(ValueError) as error:
        SSOTrainer(**models(tiny_model_dir), args=sso_args(tmp_path), train_dataset=plain, processing_class=tokenizer)
    message = str(error.value)
    assert "trl-sso generate --prompts" in message and "`sso_steer_coef=0, sso_use_weight=False`" in message
    assert "which is DPO" in message and "\n" not in message


def test_a_sorting_loss_with_the_per_example_weight_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"sorts the examples of a batch.*sso_use_weight=False"):
        SSOConfig(str(tmp_path), bf16=False, report_to="none", loss_type="aot")
    SSOConfig(str(tmp_path), bf16=False, report_to="none", loss_type="aot", sso_use_weight=False)
    SSOConfig(str(tmp_path), bf16=False, report_to="none", loss_type="aot", sso_objective="generator")


MOE = {
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, router_aux_loss_coef=0.05),
    "gpt_oss": dict(
        num_local_experts=4,
        num_experts_per_tok=2,
        intermediate_size=32,
        head_dim=16,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        router_aux_loss_coef=0.05,
    ),
}


@pytest.fixture(scope="module", params=sorted(MOE))
def moe_model_dir(request, tokenizer_dir, tmp_path_factory):
    """A tiny Mixture-of-Experts model (Qwen3-MoE or GPT-OSS) with a sizeable load-balancing coefficient."""
    from conftest import save_tiny_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return save_tiny_model(tokenizer, tmp_path_factory.mktemp(request.param), request.param, **MOE[request.param])


@pytest.mark.slow
def test_moe_load_balancing_loss_as_dpo(moe_model_dir, tokenizer, tmp_path):
    """An MoE policy: the load-balancing loss of each pair's forward is added as DPOTrainer adds its forward's one.
    - steering and W off: SSO is DPO (its aux loss included), loss and gradients, and logs the same `aux_loss`;
    - steering on (W off): the loss is DPO's on the three pairs' datasets with the steering pairs' DPO losses scaled
      by c and their aux losses not (`router_aux_loss_coef` times each forward's own, as DPO adds it), and `aux_loss`
      logs the sum of the three forwards';
    - the per-pair backward gives the gradient of one backward pass, aux losses included."""
    k, c = 0.05, 0.3
    off = sso_args(tmp_path / "off", sso_steer_coef=0.0, sso_use_weight=False)
    sso = SSOTrainer(**models(moe_model_dir), args=off, train_dataset=sso_dataset(n=N), processing_class=tokenizer)
    assert sso.aux_loss_enabled and sso.router_aux_loss_coef == k
    plain = sso_dataset(n=N).select_columns(["prompt", "chosen", "rejected"])
    dpo = dpo_trainer(moe_model_dir, tokenizer, plain, tmp_path)
    assert_close(loss_and_grads(sso), loss_and_grads(dpo))
    assert sso._metrics["train"]["aux_loss"] == pytest.approx(dpo._metrics["train"]["aux_loss"], rel=1e-5)
    assert sso._metrics["train"]["aux_loss"][0] > 0

    on = sso_args(tmp_path / "on", sso_steer_coef=c, sso_use_weight=False)
    sso = SSOTrainer(**models(moe_model_dir), args=on, train_dataset=sso_dataset(n=N), processing_class=tokenizer)
    parts = {
        "main": sso_dataset(True, N).select_columns(["prompt", "chosen", "rejected"]),
        "pos": steered_rows(True, "positive_system", "chosen", "rejected"),
        "neg": steered_rows(True, "negative_system", "original", "chosen"),
    }
    losses, aux = {}, {}
    for name, data in parts.items():
        trainer = dpo_trainer(moe_model_dir, tokenizer, data, tmp_path / name)
        losses[name] = loss_and_grads(trainer)[0].item()
        (aux[name],) = trainer._metrics["train"]["aux_loss"]
    expected = losses["main"] + c * (losses["pos"] + losses["neg"]) + (1 - c) * k * (aux["pos"] + aux["neg"])
    assert loss_and_grads(sso)[0].item() == pytest.approx(expected, rel=1e-5)
    assert sso._metrics["train"]["aux_loss"][0] == pytest.approx(sum(aux.values()), rel=1e-5)

    def step(per_pair):
        args = sso_args(tmp_path / f"step{per_pair}", sso_steer_coef=c, sso_backward_per_pair=per_pair)
        trainer = SSOTrainer(
            **models(moe_model_dir), args=args, train_dataset=sso_dataset(n=N), processing_class=tokenizer
        )
        return step_loss_and_grads(trainer)

    loss, grads, passes = step(True)
    expected_loss, expected_grads, single = step(False)
    assert (passes, single) == (2, 1)
    assert_close((loss, grads), (expected_loss, expected_grads))

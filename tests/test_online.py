"""`OnlineSSOTrainer` on a tiny model: the oracle (one online step on the triples it sampled gives the loss and
gradients of `SSOTrainer` on the same records), the signal logged per generation, the buffering over
`steps_per_generation`, a resumed run that samples and trains as the uninterrupted one, and the argument checks."""

import os

import pytest
import torch
from conftest import TEST_TRAINING, FirstGradients, policy_and_reference
from datasets import Dataset
from numerics import assert_close_to_scale
from transformers import TrainerCallback

from trl_sso import OnlineSSOConfig, OnlineSSOTrainer, SSOConfig, SSOTrainer, segment_attention


PROMPTS = Dataset.from_dict({"prompt": [f"Question {i}: why is the sky blue?" for i in range(8)]})


TRAINING = dict(TEST_TRAINING, max_length=256, sso_principle_placement="after_question")


def online_args(tmp_path, **overrides):
    kwargs = dict(
        TRAINING,
        output_dir=str(tmp_path),
        max_completion_length=8,
        temperature=1.0,
        features=["verifiable"],
        num_features=1,
        concision_prob=0.0,
        drop_revealing=False,
        min_response_chars=0,
    )
    kwargs.update(overrides)
    return OnlineSSOConfig(**kwargs)


@pytest.mark.usefixtures("each_thread_count")
def test_one_online_step_equals_sso_on_the_records_it_sampled(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """The online step forwards each record as one tree row (the principle after the question), computed by segment
    (rows of any length, here); the oracle forwards DPO's two rows a pair."""
    online_grads, oracle_grads = FirstGradients(), FirstGradients()
    args = online_args(tmp_path / "online", max_steps=1)
    online = OnlineSSOTrainer(
        **policy_and_reference(tiny_model_dir), args=args, train_dataset=PROMPTS, processing_class=tokenizer,
        callbacks=[online_grads],
    )  # fmt: skip
    plans, plan = [], segment_attention.segment_plan
    monkeypatch.setattr(segment_attention, "segment_plan", lambda *a: plans.append(a[0].shape) or plan(*a))
    monkeypatch.setattr(segment_attention, "MIN_LENGTH", 0)
    online.train()
    monkeypatch.undo()
    assert plans and all(rows == 2 for rows, _ in plans)  # one tree row a record, its attention by segment
    records = online.last_records
    assert len(records) == 2  # nothing filtered: one micro-step of 2 prompts
    oracle_args = SSOConfig(**dict(TRAINING, max_steps=1), sso_share_prompt=False, output_dir=str(tmp_path / "oracle"))
    oracle = SSOTrainer(
        **policy_and_reference(tiny_model_dir), args=oracle_args, train_dataset=Dataset.from_list(records),
        processing_class=tokenizer, callbacks=[oracle_grads],
    )  # fmt: skip
    oracle.train()
    loss = [e["loss"] for e in online.state.log_history if "loss" in e]
    expected = [e["loss"] for e in oracle.state.log_history if "loss" in e]
    assert_close_to_scale(torch.tensor(loss), torch.tensor(expected), 1e-6, name="loss")
    assert online_grads.grads.keys() == oracle_grads.grads.keys()
    for name, grad in oracle_grads.grads.items():
        assert_close_to_scale(online_grads.grads[name], grad, 1e-5, name=name)


def test_the_signal_of_each_generation_is_logged_and_buffered_over_micro_steps(tiny_model_dir, tokenizer, tmp_path):
    """One generation per optimizer step serves its micro-steps their own slices in order, and each logged step
    carries the values of its generation's signal (computed here by hand from its records) and its A gaps.

    Mutations seen failing: `_serve` handing out `self._buffer[0]` to every micro-step (the slice check), and
    `generation_metrics` dividing by twice the prompts (the value check)."""
    from trl_sso.data import RESPONSE_COLUMNS as COLUMNS
    from trl_sso.signal.report import accuracy

    args = online_args(tmp_path, gradient_accumulation_steps=2, max_steps=2)
    trainer = OnlineSSOTrainer(model=tiny_model_dir, args=args, train_dataset=PROMPTS, processing_class=tokenizer)
    calls, generated, served, batches = [], [], [], []
    generate, prepare, log = trainer._generate, trainer._prepare_inputs, trainer._log_generation

    def spy_generate(rows, generation):
        calls.append((len(rows), generation))
        generated.append(generate(rows, generation))
        return generated[-1]

    def spy_prepare(inputs):  # each micro-step's batch, as `SSOTrainer.training_step` prepares it
        served.append(inputs)
        return prepare(inputs)

    trainer._generate, trainer._prepare_inputs = spy_generate, spy_prepare
    trainer._log_generation = lambda batch, n: batches.append((batch, n)) or log(batch, n)
    trainer.train()
    assert calls == [(4, 0), (4, 1)]  # one generation per optimizer step, for its 2 micro-steps of 2 prompts
    assert len(served) == 4 and all(s is generated[i // 2][i % 2] for i, s in enumerate(served))
    assert generated[0][0] is not generated[0][1]
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for entry, (batch, n) in zip(logged, batches):
        records, reasons = batch.records, batch.reasons
        expected = {  # by hand, from the generation's own records and drop reasons
            "kept": len(records) / n,
            "dropped": sum(r is not None for r in reasons) / n,
            "tokens_chosen": sum(r["chosen_tokens"] for r in records) / len(records),
            "tokens_original": sum(r["original_tokens"] for r in records) / len(records),
            "truncated": sum(not r[f"{c}_finished"] for r in records for c in COLUMNS) / (3 * len(records)),
        }
        overall = accuracy(records, trainer.features)["overall"]
        if overall and overall["pairs"]:
            expected["accuracy"] = overall["correct"]
        for key, value in expected.items():
            assert entry[f"online/{key}"] == pytest.approx(value, abs=1e-6), key
        assert {"online/a_gap_chosen", "online/a_gap_rejected"} <= set(entry)


def test_a_micro_step_with_every_triple_filtered_out_trains_on(tiny_model_dir, tokenizer, tmp_path):
    """The zero loss of an empty micro-step reaches every trainable parameter (a zero gradient, not none), so that
    DDP's all-reduce and the optimizer see every parameter as on any step.

    Mutation seen failing: the zero built from the first trainable parameter only (`next(iter(...))`)."""
    grads = FirstGradients()
    args = online_args(tmp_path, max_steps=2, min_response_chars=10_000)  # every response is too short
    trainer = OnlineSSOTrainer(
        model=tiny_model_dir, args=args, train_dataset=PROMPTS, processing_class=tokenizer, callbacks=[grads]
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert [e["loss"] for e in trainer.state.log_history if "loss" in e] == [0.0, 0.0]
    assert all(e["online/kept"] == 0.0 for e in trainer.state.log_history if "loss" in e)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert set(grads.grads) == trainable  # every trainable parameter got a gradient ...
    assert all(not g.any() for g in grads.grads.values())  # ... and it is zero
    for name, value in trainer.model.named_parameters():  # a zero gradient: no parameter moves (no weight decay)
        torch.testing.assert_close(value.detach(), before[name])


class StopAfter(TrainerCallback):
    """Ends training after `step` optimizer steps, once their checkpoint is saved: a kill at that point."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.slow  # end-to-end (several processes, or whole command runs): outside the fast subset
def test_a_resumed_run_samples_and_trains_as_the_uninterrupted_one(tiny_model_dir, tokenizer, tmp_path):
    def run(folder, resume=False, callbacks=None):
        args = online_args(folder, max_steps=4, save_strategy="steps", save_steps=2)
        trainer = OnlineSSOTrainer(
            model=tiny_model_dir, args=args, train_dataset=PROMPTS, processing_class=tokenizer, callbacks=callbacks
        )
        trainer.train(resume_from_checkpoint=resume)
        return [e["loss"] for e in trainer.state.log_history if "loss" in e], trainer.last_records

    whole, whole_records = run(tmp_path / "whole")
    stopped, _ = run(tmp_path / "parts", callbacks=[StopAfter(2)])
    assert len(stopped) == 2
    resumed, resumed_records = run(tmp_path / "parts", resume=True)
    assert_close_to_scale(torch.tensor(resumed), torch.tensor(whole), 1e-5, name="losses")
    assert [r["chosen"] for r in resumed_records] == [r["chosen"] for r in whole_records]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="precompute_ref_log_probs=True` cannot work"):
        OnlineSSOConfig("out", precompute_ref_log_probs=True, report_to="none")
    with pytest.raises(TypeError, match="OnlineSSOConfig"):
        OnlineSSOTrainer(model="any", args=SSOConfig("out", report_to="none"), train_dataset=PROMPTS)
    with pytest.raises(ValueError, match="Unknown feature"):
        OnlineSSOConfig("out", features=["Brevityy"], report_to="none")


@pytest.mark.slow  # end-to-end (several processes, or whole command runs): outside the fast subset
def test_the_online_command_on_two_processes(tiny_model_dir, tmp_path):
    """`trl-sso online` under DDP on 2 CPU processes (through `--accelerate_config`): each process samples its share
    of the prompts, and the card and metrics are saved."""
    import json
    import subprocess
    from pathlib import Path

    import yaml
    from conftest import free_port

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "recipes" / "accelerate_configs" / "multi_cpu.yaml").read_text())
    config["main_process_port"] = free_port()
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(8)))
    out = tmp_path / "out"
    flags = (
        f"--model_name_or_path {tiny_model_dir} --dataset_name {prompts} --output_dir {out} --max_steps 2 "
        "--per_device_train_batch_size 2 --max_completion_length 8 --features verifiable --num_features 1 "
        "--drop_revealing false --min_response_chars 0 --report_to none --save_strategy no --logging_steps 1 "
        f"--gradient_checkpointing false --dataloader_pin_memory false --accelerate_config {tmp_path / 'two.yaml'}"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(["trl-sso", "online", *flags.split()], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    # 8 prompts, 2 per process and step on 2 processes: each step is half an epoch
    assert [entry["epoch"] for entry in steps] == [0.5, 1.0] and all("online/kept" in entry for entry in steps)
    assert "online-sso" in (out / "README.md").read_text()


def test_use_vllm_samples_through_trls_vllm_generation(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """TRL's `VLLMGeneration` (colocate, over a stand-in engine), as GRPO drives it: built from the trainer's model,
    the policy's weights synced before each generation that follows an optimizer step (round 2: the trained
    weights, by their fingerprint), each call with its own sampling settings."""
    from vllm_engine import StandInLLM, fingerprint, use_stand_in_llm

    events = use_stand_in_llm(monkeypatch, tokenizer)
    args = online_args(
        tmp_path, use_vllm=True, vllm_gpu_memory_utilization=0.4, max_steps=2, original_temperature=0.5,
        generation_kwargs={"repetition_penalty": 1.1},
    )  # fmt: skip
    trainer = OnlineSSOTrainer(model=tiny_model_dir, args=args, train_dataset=PROMPTS, processing_class=tokenizer)
    start = fingerprint(trainer.model)
    synced = []
    sync = trainer.vllm.sync
    monkeypatch.setattr(trainer.vllm, "sync", lambda: (sync(), synced.append(fingerprint(trainer.model))))
    trainer.train()
    assert StandInLLM.built[0]["model"] == tiny_model_dir and StandInLLM.built[0]["gpu_memory_utilization"] == 0.4
    assert [event.split()[0] for event in events] == ["build"] + ["load", "generate", "generate"] * 2
    loads = [event for event in events if event.startswith("load")]
    assert loads == [start, synced[1]] and synced[0] == start and synced[1] != start  # the trained weights, step 2
    assert [params["temperature"] for params in StandInLLM.params] == [1.0, 0.5, 1.0, 0.5]  # y+ / y-, then y_o
    assert all(p["max_tokens"] == 8 and p["repetition_penalty"] == 1.1 and "seed" in p for p in StandInLLM.params)
    assert len(trainer.last_records) == 2 and trainer.last_records[0]["chosen"][-1]["content"].startswith("Answer")


def test_the_policy_picks_the_features_as_it_is_at_each_generation(tiny_model_dir, tokenizer, tmp_path):
    """With `principle_source="policy"`, the principles of each generation are written by the policy with the weights
    it has at that generation: those the trainer is training, which moved between the two generations.

    Mutation seen failing: the principle source sampling from a copy of the policy made when the trainer is built."""
    from trl_sso.generation.sources import PrincipleSource

    args = online_args(tmp_path, max_steps=2, principle_source="policy")
    trainer = OnlineSSOTrainer(model=tiny_model_dir, args=args, train_dataset=PROMPTS, processing_class=tokenizer)
    seen, assign = [], PrincipleSource.assign

    def spy_assign(source, indices, queries, batch_seed):
        def weights(model):
            return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()

        seen.append((weights(source.policy_sampler.model), weights(trainer.model)))
        return assign(source, indices, queries, batch_seed)

    PrincipleSource.assign = spy_assign
    try:
        trainer.train()
    finally:
        PrincipleSource.assign = assign
    assert trainer.last_records and all(r["principle_source"] == "policy" for r in trainer.last_records)
    assert len(seen) == 2
    for writer, trained in seen:
        torch.testing.assert_close(writer, trained)  # the policy as it is now
    assert not torch.equal(seen[0][0], seen[1][0])  # and it moved between the generations


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_trls_reference_model_callbacks(tiny_model_dir, tokenizer, tmp_path):
    """`sync_ref_model=True` and the experimental `BEMACallback(update_ref_model=True)` update the reference model of
    online training too."""
    from trl.experimental.bema_for_ref_model import BEMACallback

    args = online_args(tmp_path / "sync", max_steps=1, sync_ref_model=True, ref_model_sync_steps=1,
                       ref_model_mixup_alpha=1.0)  # fmt: skip
    trainer = OnlineSSOTrainer(
        **policy_and_reference(tiny_model_dir), args=args, train_dataset=PROMPTS, processing_class=tokenizer
    )
    trainer.train()
    reference = dict(trainer.ref_model.named_parameters())
    for name, value in trainer.model.named_parameters():
        torch.testing.assert_close(reference[name], value)

    models = policy_and_reference(tiny_model_dir)
    before = {name: p.detach().clone() for name, p in models["ref_model"].named_parameters()}
    bema = BEMACallback(update_freq=1, update_ref_model=True, ref_model_update_freq=1, ref_model_update_after=1)
    trainer = OnlineSSOTrainer(
        **models, args=online_args(tmp_path / "bema", max_steps=2), train_dataset=PROMPTS,
        processing_class=tokenizer, callbacks=[bema],
    )  # fmt: skip
    trainer.train()
    after = dict(trainer.ref_model.named_parameters())
    assert any(not torch.equal(after[name].detach(), value) for name, value in before.items())

"""The generator's logic with scripted samplers (fast, exact): schema and provenance, filters and their counts,
resume after a crash, the vLLM adapter, prompt loading and bad input."""

import json

import pytest
from conftest import Echo, make
from datasets import Dataset

from trl_sso.data import validate_dataset
from trl_sso.generation import GenerateArguments
from trl_sso.generation.filters import drop_reason, logprob_keep
from trl_sso.generation.prompts import default_prompts, load_prompts
from trl_sso.generation.samplers import Completion
from trl_sso.models import require_chat_template
from trl_sso.signal.responses import normalize


def test_dataset_schema_provenance_and_summary(tmp_path, tokenizer):
    dataset, summary = make(tmp_path, tokenizer).run()
    assert len(dataset) == 10 and summary["num_records"] == 10 and summary["num_prompts"] == 10
    validate_dataset(dataset)
    row = dataset[0]
    assert row["prompt_index"] == 0 and row["prompt"] == [{"role": "user", "content": default_prompts()[0]["prompt"]}]
    assert row["chosen"][0]["content"].startswith("Your response should be ")
    assert row["rejected"][0]["content"].startswith("Your response should be ")
    assert row["original"][0]["content"].startswith("plain / ")
    for column in ("features", "principle_source", "generator_model", "seed", "iteration"):
        assert column in dataset.column_names
    assert row["generator_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and row["seed"] == 3
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["num_records"] == 10 and sum(on_disk["feature_counts"].values()) >= 20
    from datasets import load_dataset

    assert load_dataset(str(tmp_path / "out"), split="train").to_list() == dataset.to_list()


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, tokenizer):
    reference, _ = make(tmp_path / "a", tokenizer).run()
    crashing = make(tmp_path / "b", tokenizer, sampler=Echo(fail_after=3))  # dies in the second batch
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.run()
    done = sorted(p.name for p in (tmp_path / "b" / "out" / "batches").iterdir())
    assert done == ["batch-000000.json"]  # the first batch is safe on disk, nothing partial
    resumed_sampler = Echo()
    resumed, _ = make(tmp_path / "b", tokenizer, sampler=resumed_sampler).run()
    assert resumed_sampler.calls == 2 * 2  # two batches left, two sampling calls each
    assert resumed.to_list() == reference.to_list()


def test_rerun_with_other_settings_is_refused(tmp_path, tokenizer):
    make(tmp_path, tokenizer).run()
    with pytest.raises(ValueError, match="other settings"):
        make(tmp_path, tokenizer, seed=4).run()


def test_filters_are_counted_by_reason(tmp_path, tokenizer):
    def answer(tag, user):
        if "capital" in user or "boiling" in user:
            return "Same answer."
        if "dog" in user:
            return f"As my guidelines say: {tag}." if tag.startswith("Your response should be") else "plain"
        if "raise" in user:
            return "" if tag == "plain" else tag
        return f"{tag}: {user}"

    prompts = tmp_path / "prompts.jsonl"
    questions = [
        "What is the capital of Peru?",
        "Should I get a dog?",
        "How do I ask for a raise?",
        "Why is grass green?",
    ]
    prompts.write_text("\n".join(json.dumps({"question": q}) for q in questions))
    dataset, summary = make(
        tmp_path,
        tokenizer,
        sampler=Echo(answer=answer),
        prompts=str(prompts),
        prompt_column="question",
        num_prompts=None,
    ).run()
    assert [r["prompt"][0]["content"] for r in dataset] == ["Why is grass green?"]
    dropped = {k: v for k, v in summary["dropped"].items() if v}
    assert dropped == {"chosen_equals_rejected": 1, "reveals_guidelines": 1, "empty": 1}


def test_each_filter():
    def c(text, finished=True):
        return Completion(text, 3, finished)

    assert normalize("Helpful Response: The sky is blue.") == normalize("the sky is  blue.")
    assert drop_reason(c("A"), c("Hi there"), c("Hello")) == "empty"  # shorter than min_chars
    assert drop_reason(c("Good one"), c("Bad one"), c("Other"), drop_truncated=True) is None
    assert drop_reason(c("Good one", False), c("Bad one"), c("Other"), drop_truncated=True) == "truncated"
    assert drop_reason(c("Good one", False), c("Bad one"), c("Other")) is None
    assert (
        drop_reason(c("Helpful Response: Same"), c("Unhelpful answer: same"), c("Other")) == "chosen_equals_rejected"
    )
    assert drop_reason(c("Good one"), c("Bad one"), c("good one")) == "original_equals_chosen"
    assert drop_reason(c("Good one"), c("Bad one"), c("Bad one")) == "original_equals_rejected"
    assert drop_reason(c("Per the guidelines, ok"), c("Bad one"), c("Other")) == "reveals_guidelines"
    assert drop_reason(c("Per the guidelines, ok"), c("Bad one"), c("Other"), drop_revealing=False) is None
    good = dict(p_chosen=-1, o_chosen=-2, n_chosen=-3, n_rejected=-1, o_rejected=-2, p_rejected=-3)
    wrong_order = dict(good, n_chosen=-1.5)  # more likely under the negative principle than the plain prompt
    off_policy = dict(good, o_chosen=-2.9, p_chosen=-1, n_chosen=-3.5)
    assert logprob_keep([good, wrong_order, good]) == [True, False, True]
    assert logprob_keep([good, off_policy]) == [True, False]


def test_logprob_filter_runs_through_the_sampler(tmp_path, tokenizer):
    class Scored(Echo):
        def mean_logps(self, prompts, responses):
            # plain prompts score the responses highest: every record fails the principle ordering
            return [
                [-1.0 if not any(m["role"] == "system" for m in p) else -2.0] * len(r)
                for p, r in zip(prompts, responses)
            ]

    with pytest.raises(RuntimeError, match="logprob"):
        make(tmp_path, tokenizer, sampler=Scored(), logprob_filter=True).run()


def test_vllm_missing_is_a_clear_error():
    from trl_sso.generation.arguments import GenerationOptions
    from trl_sso.generation.vllm import VLLMEngine

    with pytest.raises(ImportError, match=r"pip install trl-sso\[vllm\]"):
        VLLMEngine(GenerationOptions(use_vllm=True))


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_prompts_from_files(tmp_path, suffix):
    data = Dataset.from_dict({"q": ["First?", "  ", "Third?"], "other": [1, 2, 3]})
    path = tmp_path / f"prompts{suffix}"
    {
        ".json": lambda: data.to_json(path, lines=False),
        ".jsonl": lambda: data.to_json(path),
        ".csv": lambda: data.to_csv(path),
        ".parquet": lambda: data.to_parquet(path),
    }[suffix]()
    assert load_prompts(str(path), column="q") == [
        [{"role": "user", "content": "First?"}],
        [{"role": "user", "content": "Third?"}],
    ]


def test_default_prompts_and_bad_prompt_sets(tmp_path):
    records = default_prompts()
    assert len(records) == 200 and len({r["prompt"] for r in records}) == 200
    assert {r["category"] for r in records} == {"advice", "writing", "coding", "math", "safety", "factual"}
    assert len(load_prompts(num_prompts=5)) == 5
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "Hi"}\n')
    with pytest.raises(ValueError, match="no column 'prompt'.*\\['text'\\].*--prompt_column"):
        load_prompts(str(path))
    path.write_text('{"prompt": ""}\n')
    with pytest.raises(ValueError, match="no non-empty prompt"):
        load_prompts(str(path))
    with pytest.raises(ValueError, match="\\.json, \\.jsonl, \\.csv or \\.parquet"):
        (tmp_path / "p.txt").write_text("x")
        load_prompts(str(tmp_path / "p.txt"))


def test_bad_arguments_and_features(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="num_prompts"):
        GenerateArguments(num_prompts=0)
    with pytest.raises(ValueError, match="principle_model"):
        GenerateArguments(principle_source="model")
    from trl_sso.principles import PrincipleError

    with pytest.raises(PrincipleError, match="Unknown feature\\(s\\) \\['Wit'\\]"):
        make(tmp_path, tokenizer, features=["Accuracy", "Wit"])


def test_model_without_chat_template(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template.*instruction-tuned"):
        require_chat_template(tokenizer, "gpt2")


def test_generated_dataset_trains_dpo_and_reward_models(tmp_path, tokenizer, tiny_model_dir):
    """prompt/chosen/rejected of a generated dataset are plain preference data for TRL's DPO and reward trainers."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    dataset, _ = make(tmp_path, tokenizer, num_prompts=4).run()
    pairs = dataset.select_columns(["prompt", "chosen", "rejected"])
    common = dict(
        max_steps=1,
        per_device_train_batch_size=2,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        dataloader_pin_memory=False,
    )
    dpo = DPOTrainer(
        tiny_model_dir,
        args=DPOConfig(str(tmp_path / "dpo"), **common),
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    dpo.train()
    config = LlamaConfig.from_pretrained(tiny_model_dir, num_labels=1)
    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_config(config)
    reward = RewardTrainer(
        reward_model,
        args=RewardConfig(str(tmp_path / "rm"), **common),
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    reward.train()
    assert dpo.state.global_step == 1 and reward.state.global_step == 1

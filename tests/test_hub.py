"""Round trips through the local Hub test server: datasets, adapters, full models and reward models pushed and pulled
back with the unmodified huggingface_hub, datasets, transformers and peft; cards; retries and failures; no secrets."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import load_tiny_model, sso_args, sso_dataset

from trl_sso.hub import HubPushError, detect_artifact, load_sso_dataset, push


@pytest.fixture
def generated(tmp_path, tokenizer):
    """Two generated rounds (scripted policy, fast), as `trl-sso generate` writes them."""
    from conftest import Echo

    from trl_sso.generation import GenerateArguments, SSOGenerator

    folders = []
    for iteration in (1, 2):
        args = GenerateArguments(
            output_dir=str(tmp_path / f"round{iteration}"),
            num_prompts=6,
            batch_size=3,
            iteration=iteration,
            seed=iteration,
            principle_placement=("system", "after_question")[iteration - 1],
        )
        SSOGenerator(args, sampler=Echo(), tokenizer=tokenizer).run()
        folders.append(tmp_path / f"round{iteration}")
    return folders


def test_dataset_rounds_as_configs_both_loadable(hub, generated):
    import datasets
    from huggingface_hub import DatasetCard

    assert detect_artifact(generated[0]) == "dataset"
    for folder in generated:
        push(folder, "tester/sso-data")
    first = datasets.load_dataset("tester/sso-data", "iteration_1", split="train")
    second = datasets.load_dataset("tester/sso-data", "iteration_2", split="train")
    assert first.to_list() == datasets.load_dataset(str(generated[0]), split="train").to_list()
    assert second[0]["iteration"] == 2 and len(first) == len(second) == 6
    card = DatasetCard.load("tester/sso-data", repo_type="dataset")
    assert {c["config_name"] for c in card.data.configs} == {"iteration_1", "iteration_2"}
    for tag in ("trl", "sso", "synthetic", "preference"):
        assert tag in card.data.tags
    assert card.data.size_categories == ["n<1K"] and card.data.license and card.data.task_categories
    assert "principle source | library" in card.text and "chosen_equals_rejected" in card.text
    assert 'load_dataset("tester/sso-data", "iteration_2"' in card.text and "DPOTrainer" in card.text
    # pulled into the canonical schema, and pushing the same content again adds nothing: no commit at all
    from huggingface_hub import HfApi

    assert load_sso_dataset("tester/sso-data", "iteration_1").to_list() == first.to_list()
    # each round's placement travels with it: x+ and x- rebuild from the pulled data exactly as from the local data
    from trl_sso.data import pair_texts

    pulled = load_sso_dataset("tester/sso-data", "iteration_2")
    assert set(first["principle_placement"]) == {"system"} and set(pulled["principle_placement"]) == {"after_question"}
    local = datasets.load_dataset(str(generated[1]), split="train")
    assert [pair_texts(r) for r in pulled.to_list()] == [pair_texts(r) for r in local.to_list()]
    assert pair_texts(pulled[0])["pos"][0][-1]["content"].endswith(pulled[0]["positive_system"])
    assert "principle placement | after_question" in DatasetCard.load("tester/sso-data", repo_type="dataset").text
    commits = HfApi().list_repo_commits("tester/sso-data", repo_type="dataset")
    assert [c.title for c in commits][:2] == [
        "Add SSO dataset config iteration_2",
        "Add SSO dataset config iteration_1",
    ]
    push(generated[1], "tester/sso-data")  # a rerun of the last push
    assert HfApi().list_repo_commits("tester/sso-data", repo_type="dataset") == commits
    push(generated[0], "tester/sso-data")  # an earlier round again: its data stay as they were
    assert datasets.load_dataset("tester/sso-data", "iteration_1", split="train").to_list() == first.to_list()
    # The latest round is the default config, whichever round was pushed last
    assert datasets.load_dataset("tester/sso-data", split="train").to_list() == second.to_list()
    card = DatasetCard.load("tester/sso-data", repo_type="dataset")
    assert [c["config_name"] for c in card.data.configs if c.get("default")] == ["iteration_2"]


def test_reference_format_datasets_are_pulled_into_the_schema(hub):
    from conftest import V1, V2
    from datasets import Dataset

    Dataset.from_list([V1, V1]).push_to_hub("tester/sso-v1")
    Dataset.from_list([V2]).push_to_hub("tester/sso-v2")
    v1 = load_sso_dataset("tester/sso-v1")
    v2 = load_sso_dataset("tester/sso-v2", conversational=False)
    assert v1[0]["original"] == [{"role": "assistant", "content": "Sunlight and rain make them."}]
    assert v2[0]["prompt"] == "Explain rainbows." and v2[0]["positive_system"] == V2["p_system"]


def test_lora_adapter_round_trip_same_logits(hub, tiny_model_dir, tokenizer, tmp_path):
    from peft import LoraConfig, PeftModel

    from trl_sso import SSOTrainer

    args = sso_args(
        tmp_path / "adapter",
        max_steps=2,
        learning_rate=1e-2,
        push_to_hub=True,
        hub_model_id="tester/sso-adapter",
        hub_strategy="end",
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = SSOTrainer(
        model=tiny_model_dir, args=args, train_dataset=sso_dataset(), processing_class=tokenizer, peft_config=lora
    )
    trainer.train()
    trainer.push_to_hub()
    ids = tokenizer("Hello there, how are you?", return_tensors="pt")["input_ids"]
    trainer.model.eval()
    with torch.no_grad():
        before = trainer.model(input_ids=ids).logits
    reloaded = PeftModel.from_pretrained(load_tiny_model(tiny_model_dir), "tester/sso-adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, before)
    from huggingface_hub import ModelCard

    card = ModelCard.load("tester/sso-adapter")
    assert card.data.library_name == "peft" and "sso" in card.data.tags and "xiang2024sso" in card.text
    assert "Training results" in card.text


def test_full_model_and_reward_model_round_trip(hub, tiny_model_dir, tokenizer, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    from trl_sso import SSOTrainer

    trainer = SSOTrainer(
        model=tiny_model_dir,
        args=sso_args(tmp_path / "full", max_steps=1),
        train_dataset=sso_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()
    assert detect_artifact(tmp_path / "full") == "model"
    push(tmp_path / "full", "tester/sso-full", revision="iteration_1", commit_message="round 1")
    reloaded = AutoModelForCausalLM.from_pretrained("tester/sso-full", revision="iteration_1")
    for (name, a), b in zip(trainer.model.state_dict().items(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    from huggingface_hub import hf_hub_download

    card = ModelCard.load(hf_hub_download("tester/sso-full", "README.md", revision="iteration_1"))
    assert card.data.library_name == "transformers" and {"trl", "sso"} <= set(card.data.tags)
    assert '"tester/sso-full"' in card.text  # the quick start names the published repo

    config = LlamaConfig.from_pretrained(tiny_model_dir, num_labels=1)
    reward = AutoModelForSequenceClassification.from_config(config)
    folder = tmp_path / "reward"
    reward.save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.75, "eval_samples": 40}))
    assert detect_artifact(folder) == "reward_model"
    push(folder, "tester/sso-rm")
    again = AutoModelForSequenceClassification.from_pretrained("tester/sso-rm")
    torch.testing.assert_close(again.score.weight, reward.score.weight)
    card = ModelCard.load("tester/sso-rm")
    assert card.data.pipeline_tag == "text-classification" and card.data.library_name == "transformers"
    assert "0.7500** (95% interval 0.60 to 0.86) (40 pairs)" in card.text  # 30 of 40: its Wilson interval


def test_transient_errors_are_retried(hub, generated):
    import datasets

    hub.fail_next(3, 503)
    push(generated[0], "tester/flaky")
    assert len(datasets.load_dataset("tester/flaky", "iteration_1", split="train")) == 6


@pytest.mark.parametrize("status,fragment", [(401, "HTTP 401"), (403, "write access")])
def test_permanent_failures_stop_with_a_clear_message(hub, generated, status, fragment):
    before = sorted(p.name for p in generated[0].rglob("*"))
    hub.fail_next(1, status)
    with pytest.raises(HubPushError, match=fragment) as error:
        push(generated[0], "tester/refused")
    assert "local files are untouched" in str(error.value)
    assert sorted(p.name for p in generated[0].rglob("*")) == before
    push(generated[0], "tester/refused")  # pushable later


def test_unknown_namespace_and_server_gone(hub, generated):
    with pytest.raises(HubPushError, match="HTTP 404.*namespace"):
        push(generated[0], "nobody/data")
    hub.stop()
    with pytest.raises(HubPushError, match="could not be reached"):
        push(generated[0], "tester/gone")


def test_tokens_never_reach_cards_configs_or_logs(hub, tiny_model_dir, tokenizer, tmp_path, capfd, caplog):
    from trl_sso import SSOTrainer

    token = os.environ["HF_TOKEN"]
    args = sso_args(tmp_path / "secret", max_steps=1, hub_token=token, save_strategy="steps", save_steps=1)
    trainer = SSOTrainer(model=tiny_model_dir, args=args, train_dataset=sso_dataset(), processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    push(tmp_path / "secret", "tester/secret-model")
    out, err = capfd.readouterr()
    assert token not in out + err + caplog.text
    for path in (tmp_path / "secret").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    from huggingface_hub import hf_hub_download

    for name in ("README.md", "config.json"):
        assert token not in open(hf_hub_download("tester/secret-model", name)).read()


def test_push_cli(hub, generated, tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trl_sso.cli.main",
            "push",
            str(generated[1]),
            "--repo_id",
            "tester/cli-data",
            "--config_name",
            "round_two",
            "--private",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Published" in result.stdout and env["HF_TOKEN"] not in result.stdout + result.stderr
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files("tester/cli-data", repo_type="dataset")
    assert any(f.startswith("round_two/") for f in files)
    assert HfApi().dataset_info("tester/cli-data").private
    failed = subprocess.run(
        [sys.executable, "-m", "trl_sso.cli.main", "push", str(generated[1]), "--repo_id", "nobody/cli-data"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and "HTTP 404" in failed.stderr


def test_dataset_card_metadata_from_hub_prompts(hub, tmp_path, tokenizer):
    """Prompts from a Hub dataset: the card names it as `source_datasets` and takes its language; the license comes
    from the generator (the packaged SmolLM2 here: apache-2.0); the card parses with huggingface_hub."""
    import datasets
    from conftest import Echo
    from huggingface_hub import DatasetCard, HfApi

    from trl_sso.generation import GenerateArguments, SSOGenerator

    datasets.Dataset.from_list([{"prompt": f"Question {i}?"} for i in range(4)]).push_to_hub("tester/questions")
    HfApi().upload_file(
        path_or_fileobj=b"---\nlanguage: fr\nlicense: cc-by-4.0\n---\n\nQuestions.\n",
        path_in_repo="README.md",
        repo_id="tester/questions",
        repo_type="dataset",
    )
    args = GenerateArguments(output_dir=str(tmp_path / "fr"), prompts="tester/questions", num_prompts=4, batch_size=2)
    SSOGenerator(args, sampler=Echo(), tokenizer=tokenizer).run()
    push(tmp_path / "fr", "tester/sso-fr")
    metadata = DatasetCard.load("tester/sso-fr").data.to_dict()
    assert metadata["source_datasets"] == ["tester/questions"] and metadata["language"] == ["fr"]
    assert metadata["license"] == "apache-2.0" and metadata["annotations_creators"] == ["machine-generated"]
    assert metadata["size_categories"] == ["n<1K"] and "license_name" not in metadata
    local = (tmp_path / "fr" / "README.md").read_text()  # the folder's own card: its snippet loads the folder
    assert f'load_dataset("{tmp_path / "fr"}", split="train")' in local


def test_push_names_the_packaged_base_by_hub_id(hub, tiny_model_dir, tmp_path, monkeypatch, caplog):
    """An adapter saved on the packaged model's cache folder is published naming
    `HuggingFaceTB/SmolLM2-135M-Instruct`, the local file untouched; an adapter on a base with no Hub id is published
    with a warning saying how to make it loadable."""
    from huggingface_hub import hf_hub_download
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("TRL_SSO_CACHE", str(tmp_path / "cache"))
    packaged = tmp_path / "cache" / "SmolLM2-135M-Instruct"
    shutil.copytree(tiny_model_dir, packaged)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(load_tiny_model(str(packaged)), lora)
    model.save_pretrained(tmp_path / "adapter")
    local = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert local["base_model_name_or_path"] == str(packaged)
    push(tmp_path / "adapter", "tester/on-smollm2")
    published = json.loads(open(hf_hub_download("tester/on-smollm2", "adapter_config.json")).read())
    assert published["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text()) == local  # nothing local changes
    monkeypatch.setenv("TRL_SSO_CACHE", str(tmp_path / "elsewhere"))  # now the base is just a local folder
    push(tmp_path / "adapter", "tester/on-local")
    assert "will not load from the Hub alone" in caplog.text


def test_model_card_metadata_lists_links_and_license(tmp_path):
    """The SSO model card as the Hub's specification wants it, parsed back by huggingface_hub: `datasets` a list,
    the base's license, the tracker links TRL's card carries (Trackio also as TRL's `trackio:` tag)."""
    from huggingface_hub import ModelCard

    from trl_sso.cards import sso_model_card

    links = {"wandb": "https://wandb.ai/me/sso/runs/abc", "trackio": "https://me-trackio.hf.space?project=p"}
    card = sso_model_card(
        sso_args(tmp_path / "x"),
        "sso-model",
        "org/base",
        ["me/data-a", "me/data-b"],
        "me/sso-model",
        ["trl", "sso"],
        is_adapter=False,
        license={"license": "other", "license_name": "acme", "license_link": "https://example.com/l"},
        links=links,
    )
    parsed = ModelCard(str(card))
    assert parsed.data.datasets == ["me/data-a", "me/data-b"] and parsed.data.license == "other"
    assert parsed.data.license_name == "acme" and f"trackio:{links['trackio']}" in parsed.data.tags
    assert f"[Weights & Biases]({links['wandb']})" in parsed.text and "[Trackio](" in parsed.text
    assert "[me/data-a](https://huggingface.co/datasets/me/data-a), [me/data-b]" in parsed.text

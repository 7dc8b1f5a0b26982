"""Everything trl-sso publishes loads from the Hub alone: a two-round `iterate` with LoRA (with a progress line per
round and the signal across rounds), the v2 `pipeline` from a
local starting model, `train` with QLoRA and `reward` with LoRA publish to the local Hub; then the run folders are
deleted and a fresh process with an empty cache loads every model, adapter, reward model and dataset with the
standard calls, and its logits match those of the local artifacts. Every published card parses with huggingface_hub
and carries the metadata the Hub's card specification asks for."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import argv
from numerics import assert_close_to_scale

from trl_sso.cli.main import main


pytestmark = pytest.mark.slow  # end-to-end: outside the fast subset (`-m "not slow"`)
INPUT_IDS = [[1, 17, 250, 3000, 42, 7]]
ROUND = (
    "--num_prompts 4 --batch_size 2 --max_completion_length 8 --drop_revealing false --max_steps 2 "
    "--per_device_train_batch_size 2 --save_strategy no --learning_rate 1e-2 --gradient_checkpointing false "
    "--report_to none --max_length 256 --dataloader_pin_memory false --logging_steps 1 "
    "--use_peft --lora_r 4 --lora_target_modules q_proj v_proj"
).split()
ITERATE_ROUND = "--eval_num_prompts 2 --eval_max_completion_length 4".split()

# Run in a fresh process with an empty cache: load each artifact as a user would, print its logits on INPUT_IDS
LOADER = """
import json, sys, torch
from datasets import load_dataset
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
from transformers import AutoModelForCausalLM, AutoTokenizer

classes = {"model": AutoModelForCausalLM, "adapter": AutoPeftModelForCausalLM,
           "reward": AutoPeftModelForSequenceClassification}
out = {}
for name, (kind, repo, revision) in json.loads(sys.argv[1]).items():
    if kind == "dataset":
        out[name] = len(load_dataset(repo, revision, split="train"))
        continue
    options = {"num_labels": 1} if kind == "reward" else {}
    model = classes[kind].from_pretrained(repo, revision=revision, **options).eval()
    AutoTokenizer.from_pretrained(repo, revision=revision)
    with torch.no_grad():
        out[name] = model(input_ids=torch.tensor(json.loads(sys.argv[2]))).logits.tolist()
print("LOGITS" + json.dumps(out))
"""


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor(INPUT_IDS)).logits


def local_causal(folder, base=None) -> torch.Tensor:
    """Logits of a local model folder, or of a local adapter folder on the local `base` folder."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if base is None:
        return logits(AutoModelForCausalLM.from_pretrained(folder))
    return logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder))


def load_from_hub_alone(server, tmp_path, artifacts: dict) -> dict:
    env = {**os.environ, **server.environ(), "HF_HOME": str(tmp_path / "fresh-hf-home")}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "fresh-datasets-cache")
    result = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(artifacts), json.dumps(INPUT_IDS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.split("LOGITS", 1)[1])


def check_model_card(repo, revision=None, license="mit", library="transformers", base="tester/tiny-base"):
    """The card parses with huggingface_hub and carries the expected metadata; it names no local path."""
    from huggingface_hub import ModelCard, hf_hub_download

    card = ModelCard.load(hf_hub_download(repo, "README.md", revision=revision))
    data = card.data
    assert data.license == license and data.library_name == library and data.base_model == base, (repo, data)
    assert data.datasets is None or isinstance(data.datasets, list)
    assert "/tmp" not in card.content and "pytest" not in card.content
    return card


def test_everything_published_loads_from_the_hub_alone(hub, tiny_model_dir, tmp_path, capfd):  # noqa: F811
    pytest.importorskip("bitsandbytes")
    from huggingface_hub import DatasetCard, HfApi, ModelCard

    # The starting model, on the Hub with its license (inherited by everything trained from it)
    start = tmp_path / "start"
    shutil.copytree(tiny_model_dir, start)
    (start / "README.md").write_text("---\nlicense: mit\n---\n\nA tiny random Llama.\n")
    HfApi().create_repo("tester/tiny-base")
    HfApi().upload_folder(folder_path=str(start), repo_id="tester/tiny-base")

    # 1. Online SSO, two rounds with LoRA, from the Hub model; data and models published as the rounds finish
    run = tmp_path / "iterate"
    publish = "--hub_dataset_id tester/sso-rounds --push_to_hub --hub_model_id tester/sso-online".split()
    command = ["iterate", "--model_name_or_path", "tester/tiny-base", "--output_dir", str(run), "--rounds", "2"]
    assert main([*command, *ROUND, *ITERATE_ROUND, *publish]) == 0
    progress = capfd.readouterr().err  # a progress line per round, at INFO, from the command's logging
    assert "[trl-sso] Round 1/2: generating with tester/tiny-base." in progress and "Round 2/2 done:" in progress
    expected = {
        "policy_1": local_causal(run / "round_1" / "policy"),
        "policy_2": local_causal(run / "round_2" / "policy"),
        "adapter_1": local_causal(run / "round_1" / "train", base=start),
        "adapter_2": local_causal(run / "round_2" / "train", base=run / "round_1" / "policy"),
    }
    report = (run / "round_2" / "report.json").read_text()
    assert str(tmp_path) not in report and json.loads(report)["published"]["adapter"]["revision"] == (
        "iteration_2-adapter"
    )
    # Every branch holds exactly its artifact: the adapter branches inherit nothing from `main` (round 1's model)
    api = HfApi()
    adapter_files = {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    policy_files = {"config.json", "model.safetensors", "README.md", "rounds.json", "rounds.png"}
    for t in (1, 2):
        published = set(api.list_repo_files("tester/sso-online", revision=f"iteration_{t}-adapter"))
        assert adapter_files <= published and not published & {"model.safetensors", "config.json", "rounds.json"}
        local = {p.name for p in (run / f"round_{t}" / "train").iterdir() if p.is_file()}
        local -= {"training_args.bin", "sso_run_settings.json"}  # the local run's arguments: not published
        assert published - {".gitattributes"} == local, t
        assert policy_files <= set(api.list_repo_files("tester/sso-online", revision=f"iteration_{t}"))

    # Publishing again after a stop before the last report adds nothing: no commit on any branch or repo
    def history():
        repos = [("tester/sso-rounds", "dataset", None)] + [
            ("tester/sso-online", "model", branch) for branch in ("main", "iteration_2", "iteration_2-adapter")
        ]
        return {r: [c.commit_id for c in api.list_repo_commits(r[0], repo_type=r[1], revision=r[2])] for r in repos}

    before = history()
    (run / "round_2" / "report.json").unlink()
    assert main([*command, *ROUND, *ITERATE_ROUND, *publish]) == 0
    assert history() == before

    # 2. The v2 pipeline from a local starting model: published on branch `base`, so that the adapters load
    v2 = tmp_path / "pipeline"
    command = ["pipeline", "--model_name_or_path", str(start), "--output_dir", str(v2)]
    publish = "--push_to_hub --hub_model_id tester/sso-v2".split()
    assert main([*command, *ROUND, *publish]) == 0
    expected["v2_policy"] = local_causal(v2 / "policy_train", base=start)
    expected["v2_generator"] = local_causal(v2 / "generator_train", base=start)

    # 3. train with QLoRA and 4. reward with LoRA, from the Hub model, on the round-1 data
    data = str(run / "round_1" / "data")
    qlora = "--max_steps 2 --use_peft --load_in_4bit --lora_r 4 --lora_target_modules q_proj v_proj --save_strategy no"
    out = tmp_path / "qlora"
    assert (
        main(argv("train", "tester/tiny-base", data, out, f"{qlora} --push_to_hub --hub_model_id tester/sso-q")) == 0
    )
    expected["qlora"] = local_causal(out, base=start)  # the adapter on the full-precision base, as users load it
    rm = tmp_path / "rm"
    options = "--max_steps 2 --use_peft --lora_r 4 --lora_target_modules q_proj v_proj --save_strategy no "
    options += "--eval_split_ratio 0.5 --per_device_eval_batch_size 2 --push_to_hub --hub_model_id tester/sso-rm"
    assert main(argv("reward", "tester/tiny-base", data, rm, options)) == 0
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base_rm = AutoModelForSequenceClassification.from_pretrained(start, num_labels=1)
    expected["reward"] = logits(PeftModel.from_pretrained(base_rm, rm))

    # Delete every local artifact, then load from the Hub alone in a fresh process with an empty cache
    for folder in (run, v2, out, rm, start):
        shutil.rmtree(folder)
    artifacts = {
        "policy_1": ("model", "tester/sso-online", "iteration_1"),
        "policy_2": ("model", "tester/sso-online", "iteration_2"),
        "main": ("model", "tester/sso-online", None),
        "adapter_1": ("adapter", "tester/sso-online", "iteration_1-adapter"),
        "adapter_2": ("adapter", "tester/sso-online", "iteration_2-adapter"),
        "v2_policy": ("adapter", "tester/sso-v2", None),
        "v2_generator": ("adapter", "tester/sso-v2-generator", None),
        "qlora": ("adapter", "tester/sso-q", None),
        "reward": ("reward", "tester/sso-rm", None),
        "data_latest": ("dataset", "tester/sso-rounds", None),
        "data_1": ("dataset", "tester/sso-rounds", "iteration_1"),
    }
    loaded = load_from_hub_alone(hub, tmp_path, artifacts)
    expected["main"] = expected["policy_2"]
    for name, values in expected.items():
        # logits computed in another process, adapters on their base: 1e-5 of the largest (tests/numerics.py)
        assert_close_to_scale(torch.tensor(loaded[name]), values, 1e-5, name=name)
    assert loaded["data_latest"] >= 1 and loaded["data_1"] >= 1

    # Cards: parsed by huggingface_hub, with license, base model, library and (reward) the evaluation result
    card = check_model_card("tester/sso-online", "iteration_2")
    assert 'revision="iteration_2"' in card.content and "iteration_<t>-adapter" in card.content
    assert card.data.datasets == ["tester/sso-rounds"]
    # Each round's policy is published with the signal across rounds; the data card has its signal section
    assert {"rounds.json", "rounds.png"} <= set(HfApi().list_repo_files("tester/sso-online", revision="iteration_2"))
    assert "## Signal quality" in DatasetCard.load("tester/sso-rounds").text
    check_model_card("tester/sso-online", "iteration_2-adapter", library="peft")
    check_model_card("tester/sso-v2", library="peft", base=None)  # a local start has no Hub id to name
    check_model_card("tester/sso-q", library="peft")
    reward = check_model_card("tester/sso-rm", library="peft")
    (result,) = reward.data.eval_results
    assert result.metric_type == "accuracy" and 0.0 <= result.metric_value <= 1.0
    assert "AutoPeftModelForSequenceClassification" in reward.content
    opening = reward.content.split("# sso-rm", 1)[1].strip().splitlines()[0]
    assert opening.startswith("A reward model") and opening.endswith("higher means preferred.")
    dataset_card = DatasetCard.load("tester/sso-rounds")
    metadata = dataset_card.data.to_dict()
    assert metadata["license"] == "mit" and metadata["annotations_creators"] == ["machine-generated"]
    assert metadata["language"] == ["en"] and metadata["task_categories"] == ["text-generation"]
    assert [c["config_name"] for c in metadata["configs"] if c.get("default")] == ["iteration_2"]
    assert ModelCard.load("tester/sso-online").data.license == "mit"

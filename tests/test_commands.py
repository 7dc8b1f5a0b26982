"""`trl-sso train` and `trl-sso reward` end to end on a tiny random model: full, QLoRA and LoRA runs from a
generated dataset folder, resume, reward accuracy on its card, publishing to the local Hub, clear errors, and a
two-process run."""

import json
import os
import subprocess
import sys

import pytest
from conftest import accelerate_launch, argv, run_processes

from trl_sso.cli.main import main


def python_blocks(card: str) -> list[str]:
    """The Python code blocks of a card, in order."""
    text = open(card).read()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def state(folder):
    return json.loads(open(os.path.join(folder, "trainer_state.json")).read())


@pytest.mark.slow
def test_train_full_then_resume(tiny_model_dir, data_folder, tmp_path, capsys):
    out = str(tmp_path / "policy")
    base = argv("train", tiny_model_dir, data_folder, out, "--save_steps 1")
    assert main([*base, "--max_steps", "2"]) == 0
    assert state(out)["global_step"] == 2 and os.path.isdir(os.path.join(out, "checkpoint-2"))
    capsys.readouterr()
    assert main([*base, "--max_steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "Resuming from" in printed and "checkpoint-2" in printed
    history = state(out)["log_history"]
    assert state(out)["global_step"] == 4 and [e["step"] for e in history if "loss" in e][-2:] == [3, 4]
    for name in ("model.safetensors", "tokenizer.json", "train_results.json", "README.md"):
        assert os.path.exists(os.path.join(out, name)), name
    assert "- sso" in open(os.path.join(out, "README.md")).read()
    # The local cards' snippets run as written: the model card's quick start, the dataset card's loading
    exec(python_blocks(os.path.join(out, "README.md"))[0], {})
    namespace = {}
    exec(python_blocks(os.path.join(data_folder, "README.md"))[0], namespace)
    assert len(namespace["dataset"]) == 8


def test_train_qlora(tiny_model_dir, data_folder, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = str(tmp_path / "qlora")
    extra = "--max_steps 2 --use_peft --load_in_4bit --lora_r 4 --lora_target_modules q_proj v_proj --save_strategy no"
    assert main(argv("train", tiny_model_dir, data_folder, out, extra)) == 0
    card = open(os.path.join(out, "README.md")).read()
    assert os.path.exists(os.path.join(out, "adapter_config.json")) and "library_name: peft" in card
    assert "4-bit" in card and "load_in_4bit=True" in card


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reward_reports_accuracy(tiny_model_dir, data_folder, tmp_path, lora):
    out = str(tmp_path / "rm")
    extra = (
        "--max_steps 2 --use_steering_pairs --eval_split_ratio 0.25 --save_strategy no --per_device_eval_batch_size 2"
    )
    if lora:
        extra += " --use_peft --lora_r 4 --lora_target_modules q_proj v_proj"
    assert main(argv("reward", tiny_model_dir, data_folder, out, extra)) == 0
    results = json.loads(open(os.path.join(out, "eval_results.json")).read())
    # 24 pairs (8 x 3), a quarter held out
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["eval_samples"] == 6
    card = open(os.path.join(out, "README.md")).read()
    assert "pipeline_tag: text-classification" in card and f"{results['eval_accuracy']:.4f}" in card


def test_impossible_combinations_are_clear_errors(tiny_model_dir, data_folder, tmp_path, capsys, monkeypatch):
    base = argv("train", tiny_model_dir, data_folder, tmp_path / "x", "--max_steps 1")
    assert main([*base, "--load_in_4bit"]) == 2
    assert "add `--use_peft`" in capsys.readouterr().err
    assert main([*base, "--use_peft", "--lora_target_modules", "attention_wizard"]) == 2
    assert "match no module" in capsys.readouterr().err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    assert main([*base, "--use_peft", "--load_in_4bit"]) == 2
    assert "pip install trl-sso[qlora]" in capsys.readouterr().err
    assert main(["train", "--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path / "y")]) == 2
    assert "or a `--datasets` mixture is required" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_train(tiny_model_dir, data_folder, tmp_path):
    out = str(tmp_path / "ddp")
    command = [
        *accelerate_launch(),
        "-m",
        "trl_sso.cli.main",
        *argv("train", tiny_model_dir, data_folder, out, "--num_train_epochs 1 --save_strategy epoch"),
    ]
    command[command.index("--per_device_train_batch_size") + 1] = "1"
    run_processes(command)
    # 8 records, 1 per device, 2 processes: 4 steps (one process would take 8)
    assert state(out)["global_step"] == 4
    assert os.path.isdir(os.path.join(out, "checkpoint-4")) and os.path.exists(os.path.join(out, "model.safetensors"))


@pytest.mark.slow
def test_trl_dpo_trains_on_a_generate_folder(tiny_model_dir, data_folder, tmp_path):
    """A `trl-sso generate` folder reads like a Hub dataset: plain `load_dataset(folder)`, also a second folder of the
    same name (no shared cache), and TRL's own `trl dpo --dataset_name folder`, run as TRL ships it."""
    import shutil

    from datasets import load_dataset

    assert load_dataset(data_folder)["train"].num_rows == 8
    other = tmp_path / "elsewhere" / os.path.basename(data_folder)
    shutil.copytree(data_folder, other)
    table = other / "data" / "train-00000-of-00001.parquet"
    load_dataset(str(other), split="train").select(range(3)).to_parquet(str(table))
    assert load_dataset(str(other), split="train").num_rows == 3
    out = tmp_path / "trl-dpo"
    options = (
        "--max_steps 1 --per_device_train_batch_size 2 --report_to none --max_length 128 --save_strategy no "
        "--bf16 false --dataloader_pin_memory false"
    )
    command = [sys.executable, "-c", "from trl.cli import main; main()", "dpo", "--model_name_or_path", tiny_model_dir]
    command += ["--dataset_name", data_folder, "--output_dir", str(out), *options.split()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Training completed" in result.stdout and (out / "model.safetensors").is_file()


def test_train_takes_trl_dataset_options(tiny_model_dir, data_folder, tmp_path, capsys):
    """TRL's dataset options of `trl dpo`: a `--datasets` mixture with `--test_split_size`, `--dataset_streaming`
    (and its need for `--max_steps`), `--ignore_bias_buffers`; flags that do not apply are one-line errors."""
    from trl_sso.cli.commands import parse
    from trl_sso.scripts.train import train_sso

    config = tmp_path / "mixture.yaml"
    config.write_text(f"datasets:\n  - path: {data_folder}\n  - path: {data_folder}\ntest_split_size: 0.25\n")
    out = tmp_path / "mixture"
    extra = f"--config {config} --max_steps 1 --eval_strategy steps --eval_steps 1 --save_strategy no"
    base = argv("train", tiny_model_dir, data_folder, out, extra)[1:]
    del base[2:4]  # no `--dataset_name`: the mixture names the data
    trainer = train_sso(*parse("train", [*base, "--ignore_bias_buffers"]))
    assert len(trainer.train_dataset) + len(trainer.eval_dataset) == 16  # 8 + 8, a quarter held out
    assert isinstance(trainer.model._ddp_params_and_buffers_to_ignore, list)
    assert any("eval_loss" in entry for entry in trainer.state.log_history)

    streamed = argv("train", tiny_model_dir, data_folder, tmp_path / "s", "--dataset_streaming --save_strategy no")
    assert main([*streamed, "--max_steps", "1"]) == 0
    assert json.loads((tmp_path / "s" / "train_results.json").read_text())["train_loss"] > 0
    capsys.readouterr()
    assert main(streamed) == 2
    assert "`--dataset_streaming` needs `--max_steps`" in capsys.readouterr().err
    assert main([*argv("train", tiny_model_dir, data_folder, tmp_path / "x", "--max_steps 1"), "--streaming"]) == 2
    assert "apply to a `--datasets` mixture" in capsys.readouterr().err
